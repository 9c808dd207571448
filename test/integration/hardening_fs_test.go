package integration

// Issue 12's filesystem findings against the real bundle: what a hostile
// sandbox user or a careless client could do to envd-fs through the front
// door.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/gen/filesystem/filesystemconnect"
	"github.com/envd-project/envd/internal/users"
	"github.com/envd-project/envd/test/envdtest"
)

func threadsOf(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// 200 downloads of a FIFO with a short client timeout: each answers 400 and
// envd-fs's thread count comes back within 5 of its start (each used to pin
// a thread in open(2) for good).
func TestFilesFIFODownloadsPinNoThreads(t *testing.T) {
	e := envdtest.Start(t)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "f")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	// A first call wakes envd-fs and its runtime up.
	res, err := http.Get(e.URL + "/files?path=" + url.QueryEscape(dir))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	pid := e.PluginPid("envd-fs")
	if pid == 0 {
		t.Fatal("no envd-fs")
	}
	start := threadsOf(t, pid)
	cl := &http.Client{Timeout: time.Second}
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[string]int{}
	sem := make(chan struct{}, 20)
	for range 200 {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			res, err := cl.Get(e.URL + "/files?path=" + url.QueryEscape(fifo))
			key := ""
			if err != nil {
				key = "error"
			} else {
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				key = fmt.Sprint(res.StatusCode)
				if res.StatusCode == 400 && !strings.Contains(string(b), "is not a regular file") {
					key = "400 " + string(b)
				}
			}
			mu.Lock()
			codes[key]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if codes["400"] != 200 {
		t.Errorf("answers: %v, want 200 × 400", codes)
	}
	deadline := time.Now().Add(15 * time.Second)
	for n := threadsOf(t, pid); n > start+5; n = threadsOf(t, pid) {
		if time.Now().After(deadline) {
			t.Fatalf("envd-fs threads: %d at start, %d after 200 FIFO downloads", start, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("envd-fs threads: %d before, %d after 200 FIFO downloads (%v)", start, threadsOf(t, pid), codes)
	// An upload onto the FIFO is refused too.
	req, _ := http.NewRequest(http.MethodPost, e.URL+"/files?path="+url.QueryEscape(fifo), strings.NewReader("x"))
	req.Header.Set("Content-Type", "application/octet-stream")
	res, err = cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 400 {
		t.Errorf("upload onto a FIFO: %d", res.StatusCode)
	}
}

// The symlink escalation of issue 12 item 4, as `user` through the bundle:
// ~/innocent.txt → a root-only secret; neither the file nor the directory
// variant writes or creates anything in the root-only place.
func TestFilesUploadAsUserDoesNotFollowPlantedSymlinks(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root")
	}
	u, err := users.Default.Lookup("user")
	if err != nil {
		t.Skip("skipping: no user `user`")
	}
	e := envdtest.Start(t)
	var rb [6]byte
	rand.Read(rb[:])
	vdir := "/var/tmp/victim-" + hex.EncodeToString(rb[:])
	if err := os.Mkdir(vdir, 0o700); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(vdir)
	secret := filepath.Join(vdir, "secret")
	os.WriteFile(secret, []byte("top secret"), 0o600)
	home := filepath.Join(u.Home, "it-"+hex.EncodeToString(rb[:]))
	os.MkdirAll(home, 0o755)
	os.Chown(home, int(u.UID), int(u.GID))
	defer os.RemoveAll(home)
	innocent := filepath.Join(home, "innocent.txt")
	os.Symlink(secret, innocent)
	linkdir := filepath.Join(home, "linkdir")
	os.Symlink(vdir, linkdir)

	upload := func(p, user string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, e.URL+"/files?username="+user+"&path="+url.QueryEscape(p), strings.NewReader("pwned"))
		req.Header.Set("Content-Type", "application/octet-stream")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		return res.StatusCode, string(b)
	}
	check := func() {
		t.Helper()
		var st syscall.Stat_t
		syscall.Stat(secret, &st)
		b, _ := os.ReadFile(secret)
		if string(b) != "top secret" || st.Uid != 0 {
			t.Fatalf("secret: %q uid %d", b, st.Uid)
		}
		if ents, _ := os.ReadDir(vdir); len(ents) != 1 {
			t.Fatalf("created in the root-only directory: %v", ents)
		}
	}
	for _, p := range []string{innocent, filepath.Join(linkdir, "new.txt"), filepath.Join(linkdir, "sub", "new.txt")} {
		if code, body := upload(p, "user"); code != 403 || !strings.Contains(body, "permission denied") {
			t.Errorf("upload as user to %s: %d %s", p, code, body)
		}
		check()
	}
	cl := filesystemconnect.NewFilesystemClient(http.DefaultClient, e.URL)
	_, err = cl.MakeDir(envdtest.Ctx(t, 10*time.Second), withUser(&fspb.MakeDirRequest{Path: filepath.Join(linkdir, "d")}, "user"))
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("MakeDir through the symlinked directory: %v", err)
	}
	check()
	// Root still writes through links, as before.
	if code, body := upload(innocent, "root"); code != 200 {
		t.Fatalf("as root: %d %s", code, body)
	}
	if b, _ := os.ReadFile(secret); string(b) != "pwned" {
		t.Fatalf("root's upload: %q", b)
	}
}

// A name that is not UTF-8 (issue 12 item 5): ListDir answers 200, an open
// WatchDir stays open and reports it, over every protocol (the failure was
// in encoding the name across the plugin hop and to the client).
func TestFilesystemNonUTF8Name(t *testing.T) {
	e := envdtest.Start(t)
	for _, p := range envdtest.Protocols() {
		t.Run(p.Name, func(t *testing.T) {
			cl := filesystemconnect.NewFilesystemClient(p.Client, e.URL, p.Options...)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			dir := t.TempDir()
			stream, err := cl.WatchDir(ctx, connect.NewRequest(&fspb.WatchDirRequest{Path: dir}))
			if err != nil {
				t.Fatal(err)
			}
			defer stream.Close()
			if !stream.Receive() || stream.Msg().GetStart() == nil {
				t.Fatalf("no start: %v", stream.Err())
			}
			os.WriteFile(filepath.Join(dir, "bad\xffname"), []byte("x"), 0o644)
			const shown = "bad\uefffname"
			ls, err := cl.ListDir(ctx, connect.NewRequest(&fspb.ListDirRequest{Path: dir}))
			if err != nil {
				t.Fatalf("ListDir: %v", err)
			}
			if len(ls.Msg.Entries) != 1 || ls.Msg.Entries[0].Name != shown {
				t.Fatalf("entries %v", ls.Msg.Entries)
			}
			if _, err := cl.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: ls.Msg.Entries[0].Path})); err != nil {
				t.Fatalf("Stat by the listed path: %v", err)
			}
			os.WriteFile(filepath.Join(dir, "after"), nil, 0o644)
			seen := map[string]bool{}
			for !(seen[shown] && seen["after"]) && stream.Receive() {
				if ev := stream.Msg().GetFilesystem(); ev != nil {
					seen[ev.Name] = true
				}
			}
			if !seen[shown] || !seen["after"] {
				t.Fatalf("watch saw %v, ended with %v", seen, stream.Err())
			}
			// The upload response names it the same way.
			req, _ := http.NewRequest(http.MethodPost, e.URL+"/files?path="+url.QueryEscape(filepath.Join(dir, shown)), bytes.NewReader([]byte("y")))
			req.Header.Set("Content-Type", "application/octet-stream")
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var out []uploaded
			json.NewDecoder(res.Body).Decode(&out)
			res.Body.Close()
			if res.StatusCode != 200 || len(out) != 1 || out[0].Name != shown {
				t.Fatalf("upload: %d %v", res.StatusCode, out)
			}
			if b, _ := os.ReadFile(filepath.Join(dir, "bad\xffname")); string(b) != "y" {
				t.Fatalf("content %q", b)
			}
		})
	}
}

// Issue 12 item 7 through the bundle: a WatchDir client sees an upload of
// a new file as CREATE, CHMOD, WRITE and an overwrite as CHMOD, WRITE,
// under the file's name only; the overwrite keeps the inode.
func TestFilesUploadEventsThroughTheBundle(t *testing.T) {
	e := envdtest.Start(t)
	cl := filesystemconnect.NewFilesystemClient(http.DefaultClient, e.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	stream, err := cl.WatchDir(ctx, connect.NewRequest(&fspb.WatchDirRequest{Path: dir}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() || stream.Msg().GetStart() == nil {
		t.Fatalf("no start: %v", stream.Err())
	}
	p := filepath.Join(dir, "f.txt")
	var ino uint64
	for i, want := range []string{"CREATE,CHMOD,WRITE", "CHMOD,WRITE"} {
		req, _ := http.NewRequest(http.MethodPost, e.URL+"/files?path="+url.QueryEscape(p), strings.NewReader(fmt.Sprint("body ", i)))
		req.Header.Set("Content-Type", "application/octet-stream")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("upload %d: %d", i, res.StatusCode)
		}
		marker := fmt.Sprint("marker", i)
		os.WriteFile(filepath.Join(dir, marker), nil, 0o644)
		var got []string
		for stream.Receive() {
			ev := stream.Msg().GetFilesystem()
			if ev == nil {
				continue
			}
			if ev.Name == marker {
				break
			}
			if ev.Name != "f.txt" {
				t.Fatalf("event for another name: %v", ev)
			}
			typ := strings.TrimPrefix(ev.Type.String(), "EVENT_TYPE_")
			if len(got) == 0 || got[len(got)-1] != typ {
				got = append(got, typ)
			}
		}
		if strings.Join(got, ",") != want {
			t.Errorf("upload %d: events %v, want %s", i, got, want)
		}
		var st syscall.Stat_t
		syscall.Stat(p, &st)
		if i == 1 && st.Ino != ino {
			t.Errorf("overwrite changed the inode: %d → %d", ino, st.Ino)
		}
		ino = st.Ino
	}
}
