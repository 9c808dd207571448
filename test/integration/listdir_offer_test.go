package integration

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/gen/filesystem/filesystemconnect"
	"github.com/envd-project/envd/test/envdtest"
)

// listDirDirs makes a directory short enough to be answered through
// envd-init's proxy and one long enough to be handed over.
func listDirDirs(t *testing.T) (small, big string) {
	t.Helper()
	root := t.TempDir()
	small, big = filepath.Join(root, "small"), filepath.Join(root, "big")
	for dir, n := range map[string]int{small: 10, big: 1500} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("entry-%05d", i)), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return small, big
}

// handoffSocket finds the Unix socket on which envd-fs takes handed-over
// connections: the one of its listening sockets named handoff.sock.
func handoffSocket(t *testing.T, pid int) string {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	tab, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/unix", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(tab)) {
		f := strings.Fields(line)
		if len(f) == 8 && inodes[f[6]] && strings.HasSuffix(f[7], "/handoff.sock") {
			return f[7]
		}
	}
	t.Fatalf("envd-fs %d has no handoff socket", pid)
	return ""
}

// A ListDir whose answer is short is answered through envd-init's proxy,
// not handed over (which costs four messages and two passed fds); a long
// one is still handed over. To see which way a call went, envd-fs's
// handoff socket is swapped for one that only counts the handoffs it is
// offered and refuses them (envd-init then answers 503).
func TestShortListDirIsNotHandedOver(t *testing.T) {
	e := envdtest.Start(t)
	small, big := listDirDirs(t)
	sock := handoffSocket(t, e.PluginPid("envd-fs"))
	if err := os.Rename(sock, sock+".real"); err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	var handoffs atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			handoffs.Add(1)
			c.Close()
		}
	}()
	restore := func() {
		ln.Close()
		_ = os.Remove(sock)
		if err := os.Rename(sock+".real", sock); err != nil {
			t.Fatal(err)
		}
	}
	defer func() {
		if ln != nil {
			restore()
		}
	}()

	list := func(c *http.Client, dir string) (int, []byte) {
		req, _ := http.NewRequest(http.MethodPost, e.URL+"/filesystem.Filesystem/ListDir", strings.NewReader(fmt.Sprintf(`{"path":%q}`, dir)))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", envdtest.BasicUser("root"))
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, b
	}
	c := &http.Client{Timeout: 30 * time.Second}
	for i := range 3 {
		if code, b := list(c, small); code != 200 || strings.Count(string(b), `"name":`) != 10 {
			t.Fatalf("short listing %d: %d %.200s", i, code, b)
		}
	}
	if n := handoffs.Load(); n != 0 {
		t.Fatalf("a short listing was handed over (%d handoffs)", n)
	}
	if code, b := list(c, big); code != http.StatusServiceUnavailable || handoffs.Load() != 1 {
		t.Fatalf("long listing with the handoff refused: %d %.200s, %d handoffs", code, b, handoffs.Load())
	}
	restore()
	ln = nil
	if code, b := list(c, big); code != 200 || strings.Count(string(b), `"name":`) != 1500 {
		t.Fatalf("long listing: %d %.200s", code, b)
	}
}

// Short (proxied) and long (handed-over) listings answer correctly over
// Connect JSON and proto, with and without gzip both ways, one after the
// other on one kept-alive connection.
func TestListDirOfferKeepsAlive(t *testing.T) {
	e := envdtest.Start(t)
	small, big := listDirDirs(t)
	o := newOneConn()
	variants := []struct {
		name string
		opts []connect.ClientOption
	}{
		{"json", []connect.ClientOption{connect.WithProtoJSON(), connect.WithAcceptCompression("gzip", nil, nil)}},
		{"proto", []connect.ClientOption{connect.WithAcceptCompression("gzip", nil, nil)}},
		{"json gzip", []connect.ClientOption{connect.WithProtoJSON(), connect.WithSendGzip()}},
		{"proto gzip", []connect.ClientOption{connect.WithSendGzip()}},
	}
	calls := 0
	for _, v := range variants {
		cl := filesystemconnect.NewFilesystemClient(o.client, e.URL, v.opts...)
		for _, dir := range []string{small, big, small} {
			res, err := cl.ListDir(o.trace(envdtest.Ctx(t, 30*time.Second)), withUser(&fspb.ListDirRequest{Path: dir}, "root"))
			if err != nil {
				t.Fatalf("%s %s: %v", v.name, dir, err)
			}
			want, _ := os.ReadDir(dir)
			var names []string
			for _, en := range res.Msg.GetEntries() {
				names = append(names, en.GetName())
				if en.GetPath() != filepath.Join(dir, en.GetName()) || en.GetSize() != 1 {
					t.Fatalf("%s: entry %v", v.name, en)
				}
			}
			if len(names) != len(want) || !slices.IsSorted(names) || names[0] != want[0].Name() {
				t.Fatalf("%s %s: %d entries, want %d", v.name, dir, len(names), len(want))
			}
			if calls > 0 && !o.same {
				t.Errorf("%s %s: a new connection", v.name, dir)
			}
			calls++
		}
		// A deeper walk is declined at once and handed over.
		res, err := cl.ListDir(o.trace(envdtest.Ctx(t, 30*time.Second)), withUser(&fspb.ListDirRequest{Path: filepath.Dir(small), Depth: 2}, "root"))
		if err != nil || len(res.Msg.GetEntries()) != 2+10+1500 || !o.same {
			t.Fatalf("%s: depth 2: %v (same connection: %v)", v.name, err, o.same)
		}
		// An error answered through the proxy keeps its Connect code.
		_, err = cl.ListDir(o.trace(envdtest.Ctx(t, 30*time.Second)), withUser(&fspb.ListDirRequest{Path: filepath.Join(small, "missing")}, "root"))
		if connect.CodeOf(err) != connect.CodeNotFound || !o.same {
			t.Errorf("%s: missing directory: %v (same connection: %v)", v.name, err, o.same)
		}
	}
}

// A short listing answered through the proxy, and a long one declined
// there and then handed over, are on the wire the answer a call handed over
// at once gets: the same status (no interim 100 the client did not ask
// for), headers (but Date) and body bytes, gzipped or not. A body above
// the offer's bound (whitespace in the JSON) makes the same call go the
// handoff's way at once.
func TestListDirOfferSameBytes(t *testing.T) {
	e := envdtest.Start(t)
	small, big := listDirDirs(t)
	c, err := net.Dial("tcp", strings.TrimPrefix(e.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	call := func(body, extra string) (*http.Response, []byte) {
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		req := fmt.Sprintf("POST /filesystem.Filesystem/ListDir HTTP/1.1\r\nHost: x\r\nOrigin: http://client.example\r\nContent-Type: application/json\r\nAuthorization: %s\r\n%sContent-Length: %d\r\n\r\n%s",
			envdtest.BasicUser("root"), extra, len(body), body)
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil || res.Close {
			t.Fatalf("answer: %v, close %v", err, res.Close)
		}
		return res, b
	}
	for _, tc := range []struct{ path, extra string }{
		{small, ""},
		{small, "Accept-Encoding: gzip\r\n"},
		{filepath.Join(small, "missing"), ""},
		{filepath.Join(small, "entry-00001"), "Accept-Encoding: gzip\r\n"},
		// Declined through the proxy, then handed over.
		{big, ""},
		{big, "Accept-Encoding: gzip\r\n"},
	} {
		short := fmt.Sprintf(`{"path":%q}`, tc.path)
		long := fmt.Sprintf(`{"path":%q%s}`, tc.path, strings.Repeat(" ", 20<<10))
		pres, pbody := call(short, tc.extra)
		hres, hbody := call(long, tc.extra)
		pres.Header.Del("Date")
		hres.Header.Del("Date")
		if pres.StatusCode != hres.StatusCode || fmt.Sprint(pres.Header) != fmt.Sprint(hres.Header) ||
			!slices.Equal(pres.TransferEncoding, hres.TransferEncoding) || pres.ContentLength != hres.ContentLength || !bytes.Equal(pbody, hbody) {
			t.Errorf("%s %q: proxied %d %v %v %d\n%q\nhanded over %d %v %v %d\n%q", tc.path, tc.extra,
				pres.StatusCode, pres.Header, pres.TransferEncoding, pres.ContentLength, pbody,
				hres.StatusCode, hres.Header, hres.TransferEncoding, hres.ContentLength, hbody)
		}
		want := map[string]int{small: 10, big: 1500}[tc.path]
		if want > 0 && pres.StatusCode != 200 {
			t.Errorf("%s: status %d", tc.path, pres.StatusCode)
		}
		if want > 0 && tc.extra != "" && pres.Header.Get("Content-Encoding") != "gzip" {
			t.Errorf("listing asked gzipped: Content-Encoding %q", pres.Header.Get("Content-Encoding"))
		}
		if pres.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(bytes.NewReader(pbody))
			if err != nil {
				t.Fatalf("gzip answer: %v", err)
			}
			if b, _ := io.ReadAll(zr); strings.Count(string(b), `"name":`) != want {
				t.Errorf("gunzipped: %.200s", b)
			}
		}
	}
}
