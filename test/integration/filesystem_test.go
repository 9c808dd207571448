package integration

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/gen/filesystem/filesystemconnect"
	"github.com/envd-project/envd/test/envdtest"
)

func withUser[T any](msg *T, user string) *connect.Request[T] {
	r := connect.NewRequest(msg)
	if user != "" {
		r.Header().Set("Authorization", envdtest.BasicUser(user))
	}
	return r
}

func TestFilesystemRPCs(t *testing.T) {
	e := envdtest.Start(t)
	for _, p := range envdtest.Protocols() {
		t.Run(p.Name, func(t *testing.T) {
			cl := filesystemconnect.NewFilesystemClient(p.Client, e.URL, p.Options...)
			ctx := envdtest.Ctx(t, 30*time.Second)
			root := t.TempDir()
			if err := os.Chmod(root, 0o755); err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(root, "a.txt")
			if err := os.WriteFile(file, []byte("hello"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(file, filepath.Join(root, "link")); err != nil {
				t.Fatal(err)
			}

			st, err := cl.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: file}))
			if err != nil {
				t.Fatal(err)
			}
			en := st.Msg.GetEntry()
			if en.GetName() != "a.txt" || en.GetType() != fspb.FileType_FILE_TYPE_FILE || en.GetSize() != 5 ||
				en.GetPermissions() != "-rw-r--r--" || en.GetOwner() != "root" || en.GetMode() != 0o644 {
				t.Errorf("stat file: %v", en)
			}
			st, err = cl.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: filepath.Join(root, "link")}))
			if err != nil {
				t.Fatal(err)
			}
			if en := st.Msg.GetEntry(); en.GetType() != fspb.FileType_FILE_TYPE_FILE || en.GetSymlinkTarget() != file || !strings.HasPrefix(en.GetPermissions(), "L") {
				t.Errorf("stat symlink: %v", en)
			}
			_, err = cl.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: filepath.Join(root, "missing")}))
			if connect.CodeOf(err) != connect.CodeNotFound {
				t.Errorf("stat missing: %v", err)
			}

			dir := filepath.Join(root, "d1", "d2")
			md, err := cl.MakeDir(ctx, withUser(&fspb.MakeDirRequest{Path: dir}, "user"))
			if err != nil {
				t.Fatal(err)
			}
			if md.Msg.GetEntry().GetType() != fspb.FileType_FILE_TYPE_DIRECTORY || md.Msg.GetEntry().GetOwner() != "user" {
				t.Errorf("makedir as user: %v", md.Msg.GetEntry())
			}
			_, err = cl.MakeDir(ctx, connect.NewRequest(&fspb.MakeDirRequest{Path: dir}))
			if connect.CodeOf(err) != connect.CodeAlreadyExists {
				t.Errorf("makedir existing: %v", err)
			}
			_, err = cl.MakeDir(ctx, connect.NewRequest(&fspb.MakeDirRequest{Path: file}))
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("makedir over a file: %v", err)
			}

			ls, err := cl.ListDir(ctx, connect.NewRequest(&fspb.ListDirRequest{Path: root, Depth: 2}))
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, en := range ls.Msg.GetEntries() {
				names = append(names, strings.TrimPrefix(en.GetPath(), root+"/"))
			}
			if got := strings.Join(names, ","); got != "a.txt,d1,d1/d2,link" {
				t.Errorf("listdir depth 2: %s", got)
			}
			_, err = cl.ListDir(ctx, connect.NewRequest(&fspb.ListDirRequest{Path: file}))
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("listdir of a file: %v", err)
			}

			dst := filepath.Join(root, "moved", "b.txt")
			mv, err := cl.Move(ctx, connect.NewRequest(&fspb.MoveRequest{Source: file, Destination: dst}))
			if err != nil {
				t.Fatal(err)
			}
			if mv.Msg.GetEntry().GetPath() != dst {
				t.Errorf("move: %v", mv.Msg.GetEntry())
			}
			_, err = cl.Move(ctx, connect.NewRequest(&fspb.MoveRequest{Source: file, Destination: dst}))
			if connect.CodeOf(err) != connect.CodeNotFound {
				t.Errorf("move missing: %v", err)
			}

			if _, err := cl.Remove(ctx, connect.NewRequest(&fspb.RemoveRequest{Path: filepath.Join(root, "moved")})); err != nil {
				t.Fatal(err)
			}
			if _, err := cl.Remove(ctx, connect.NewRequest(&fspb.RemoveRequest{Path: filepath.Join(root, "moved")})); err != nil {
				t.Errorf("remove missing must succeed: %v", err)
			}
			if _, err := os.Stat(dst); !os.IsNotExist(err) {
				t.Errorf("removed file still there: %v", err)
			}

			_, err = cl.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: "~otheruser/x"}))
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("~otheruser: %v", err)
			}
			_, err = cl.Stat(ctx, withUser(&fspb.StatRequest{Path: "/"}, "nosuchuser"))
			if connect.CodeOf(err) != connect.CodeUnauthenticated {
				t.Errorf("unknown user: %v", err)
			}
		})
	}
}

func TestFilesystemWatch(t *testing.T) {
	e := envdtest.Start(t)
	for _, p := range envdtest.Protocols() {
		t.Run(p.Name, func(t *testing.T) {
			cl := filesystemconnect.NewFilesystemClient(p.Client, e.URL, p.Options...)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			root := t.TempDir()
			stream, err := cl.WatchDir(ctx, connect.NewRequest(&fspb.WatchDirRequest{Path: root, Recursive: true, IncludeEntry: true}))
			if err != nil {
				t.Fatal(err)
			}
			defer stream.Close()
			if !stream.Receive() || stream.Msg().GetStart() == nil {
				t.Fatalf("first watch message is not start: %v %v", stream.Msg(), stream.Err())
			}
			if err := os.Mkdir(filepath.Join(root, "sub"), 0o755); err != nil {
				t.Fatal(err)
			}
			want := map[string]bool{"sub": false, "sub/f.txt": false}
			wrote := false
			for stream.Receive() {
				ev := stream.Msg().GetFilesystem()
				if ev == nil {
					continue
				}
				if ev.GetType() == fspb.EventType_EVENT_TYPE_CREATE {
					if _, ok := want[ev.GetName()]; ok {
						want[ev.GetName()] = true
						if ev.GetEntry() == nil {
							t.Errorf("create event without entry: %v", ev)
						}
					}
				}
				if want["sub"] && !wrote {
					wrote = true
					// A new subdirectory is watched too.
					if err := os.WriteFile(filepath.Join(root, "sub", "f.txt"), []byte("x"), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				if want["sub"] && want["sub/f.txt"] {
					break
				}
			}
			if !want["sub"] || !want["sub/f.txt"] {
				t.Fatalf("events seen %v (%v)", want, stream.Err())
			}

			cw, err := cl.CreateWatcher(ctx, connect.NewRequest(&fspb.CreateWatcherRequest{Path: root}))
			if err != nil {
				t.Fatal(err)
			}
			id := cw.Msg.GetWatcherId()
			if len(id) != 21 || id[0] != 'w' {
				t.Errorf("watcher id %q", id)
			}
			if err := os.WriteFile(filepath.Join(root, "polled"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			var got []*fspb.FilesystemEvent
			for deadline := time.Now().Add(5 * time.Second); len(got) == 0 && time.Now().Before(deadline); {
				ev, err := cl.GetWatcherEvents(ctx, connect.NewRequest(&fspb.GetWatcherEventsRequest{WatcherId: id}))
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, ev.Msg.GetEvents()...)
				time.Sleep(10 * time.Millisecond)
			}
			if len(got) == 0 || got[0].GetName() != "polled" {
				t.Errorf("polled events %v", got)
			}
			if _, err := cl.RemoveWatcher(ctx, connect.NewRequest(&fspb.RemoveWatcherRequest{WatcherId: id})); err != nil {
				t.Fatal(err)
			}
			_, err = cl.GetWatcherEvents(ctx, connect.NewRequest(&fspb.GetWatcherEventsRequest{WatcherId: id}))
			if connect.CodeOf(err) != connect.CodeNotFound {
				t.Errorf("events of a removed watcher: %v", err)
			}
		})
	}
}

type uploaded struct {
	Path string `json:"path"`
	Name string `json:"name"`
	Type string `json:"type"`
}

func TestFilesTransfer(t *testing.T) {
	e := envdtest.Start(t)
	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	// Octet-stream upload as user: parents are created and owned by the user.
	target := filepath.Join(root, "up", "data.bin")
	payload := bytes.Repeat([]byte("0123456789"), 100000)
	req, _ := http.NewRequest(http.MethodPost, e.URL+"/files?username=user&path="+target, bytes.NewReader(payload))
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("X-Metadata-Origin", "bench")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	var out []uploaded
	if res.StatusCode != http.StatusOK || json.Unmarshal(body, &out) != nil || len(out) != 1 || out[0].Path != target || out[0].Type != "file" {
		t.Fatalf("upload: %d %s", res.StatusCode, body)
	}
	owner := fmt.Sprint(statUID(t, target))
	if owner != fmt.Sprint(uidOf(t, "user")) {
		t.Errorf("uploaded file owned by uid %s", owner)
	}

	// Download: whole, ranged, gzip.
	res, err = http.Get(e.URL + "/files?path=" + target)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !bytes.Equal(got, payload) {
		t.Fatalf("download: %d, %d bytes", res.StatusCode, len(got))
	}
	req, _ = http.NewRequest(http.MethodGet, e.URL+"/files?path="+target, nil)
	req.Header.Set("Range", "bytes=10-19")
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ = io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusPartialContent || string(got) != "0123456789" {
		t.Errorf("range: %d %q", res.StatusCode, got)
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-", len(payload)+10))
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("range beyond the end: %d", res.StatusCode)
	}
	req, _ = http.NewRequest(http.MethodGet, e.URL+"/files?path="+target, nil)
	req.Header.Set("Accept-Encoding", "gzip")
	res, err = http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(res.Body)
	if err != nil {
		t.Fatalf("gzip download: %v (Content-Encoding %q)", err, res.Header.Get("Content-Encoding"))
	}
	got, _ = io.ReadAll(zr)
	res.Body.Close()
	if !bytes.Equal(got, payload) {
		t.Errorf("gzip download: %d bytes", len(got))
	}

	// Multipart with two files, each named by its filename.
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	for _, name := range []string{"m1.txt", "m2.txt"} {
		w, _ := mw.CreateFormFile("file", filepath.Join(root, name))
		_, _ = w.Write([]byte("content of " + name))
	}
	_ = mw.Close()
	res, err = http.Post(e.URL+"/files", mw.FormDataContentType(), &mp)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || json.Unmarshal(body, &out) != nil || len(out) != 2 {
		t.Fatalf("multipart: %d %s", res.StatusCode, body)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "m2.txt")); string(b) != "content of m2.txt" {
		t.Errorf("m2.txt = %q", b)
	}

	// Errors keep the reference's JSON shape.
	res, err = http.Get(e.URL + "/files?path=" + filepath.Join(root, "missing"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusNotFound || !strings.Contains(string(body), `"code":404`) {
		t.Errorf("missing file: %d %s", res.StatusCode, body)
	}
	res, err = http.Get(e.URL + "/files?username=nosuchuser&path=/etc/hostname")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		t.Errorf("unknown user: %d", res.StatusCode)
	}
}
