package filesystem

// Regression tests for issue 12's filesystem findings, each through the
// package's real handlers, on real files and as the real user "user".

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/internal/users"
)

func threads(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// Item 2: a download of a FIFO, a socket or a character device answers
// 400 at once; before, each one pinned an OS thread in open(2) forever.
func TestDownloadNonRegularNeverBlocks(t *testing.T) {
	srv := newFiles(t)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, p := range []string{sock, "/dev/null", "/dev/zero"} {
		resp, body := do(t, mustReq(t, http.MethodGet, filesURL(srv, p), nil))
		wantJSONError(t, resp, body, 400, fmt.Sprintf("path '%s' is not a regular file", p))
	}

	start := threads(t)
	cl := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 20}}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 20)
	errs := make(chan error, 200)
	for range 200 {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			resp, err := cl.Get(filesURL(srv, fifo))
			if err != nil {
				errs <- err
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 400 {
				errs <- fmt.Errorf("status %d", resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("FIFO download: %v", err)
	}
	// Threads the runtime started for the burst may linger idle, but none is
	// stuck: the count comes back within 5 of the start.
	deadline := time.Now().Add(10 * time.Second)
	for n := threads(t); n > start+5; n = threads(t) {
		if time.Now().After(deadline) {
			t.Fatalf("threads: %d at start, %d after 200 FIFO downloads", start, n)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// An upload onto the FIFO is refused the same way, and leaves it a FIFO.
	resp, body := do(t, octet(t, filesURL(srv, fifo), strings.NewReader("x")))
	wantJSONError(t, resp, body, 400, "path is not a regular file: "+fifo)
	if fi, err := os.Lstat(fifo); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Fatalf("fifo after upload: %v %v", fi, err)
	}
}

func mustReq(t testing.TB, method, u string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// victim makes a root-only directory (0700) holding a root-only secret
// (0600), the kind of place a user must never write through a symlink.
func victim(t testing.TB) (dir, secret string) {
	t.Helper()
	var b [6]byte
	rand.Read(b[:])
	dir = "/var/tmp/victim-" + hex.EncodeToString(b[:])
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	secret = filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("top secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, secret
}

// userDir is a fresh directory in user's home, owned by user.
func userDir(t testing.TB, u *users.User) string {
	t.Helper()
	var b [6]byte
	rand.Read(b[:])
	d := filepath.Join(u.Home, "hardfs-"+hex.EncodeToString(b[:]))
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chown(u.Home, int(u.UID), int(u.GID))
	if err := os.Chown(d, int(u.UID), int(u.GID)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func wantUnchanged(t testing.TB, secret string) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(secret, &st); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(secret)
	if string(b) != "top secret" || st.Uid != 0 || st.Gid != 0 || st.Mode&0o7777 != 0o600 {
		t.Fatalf("secret changed: %q uid %d gid %d mode %o", b, st.Uid, st.Gid, st.Mode&0o7777)
	}
}

// Item 4: an upload as user never follows a symlink (or a hard link) the
// user planted into a place the user could not write, and never chowns
// what it did not create. Root's uploads and the user's own links work.
func TestUploadAsUserThroughPlantedLinks(t *testing.T) {
	u := testUser(t)
	srv := newFiles(t)
	vdir, secret := victim(t)
	home := userDir(t, u)
	asUserURL := func(p string) string { return filesURL(srv, p, "username", "user") }

	// The file variant: ~/innocent.txt → the secret.
	innocent := filepath.Join(home, "innocent.txt")
	os.Symlink(secret, innocent)
	resp, body := do(t, octet(t, asUserURL(innocent), strings.NewReader("pwned")))
	wantJSONError(t, resp, body, 403, "permission denied")
	wantUnchanged(t, secret)
	ct, mb := multipartBody(part{"file", innocent, "pwned"})
	req := mustReq(t, http.MethodPost, filesURL(srv, "", "username", "user"), bytes.NewReader(mb))
	req.Header.Set("Content-Type", ct)
	resp, body = do(t, req)
	wantJSONError(t, resp, body, 403, "permission denied")
	wantUnchanged(t, secret)

	// A dangling link into the root-only directory creates nothing there.
	dangling := filepath.Join(home, "new.txt")
	os.Symlink(filepath.Join(vdir, "planted"), dangling)
	resp, body = do(t, octet(t, asUserURL(dangling), strings.NewReader("pwned")))
	wantJSONError(t, resp, body, 403, "permission denied")

	// The directory variant: ~/linkdir → the root-only directory; neither
	// an upload nor MakeDir creates anything inside it.
	linkdir := filepath.Join(home, "linkdir")
	os.Symlink(vdir, linkdir)
	resp, body = do(t, octet(t, asUserURL(filepath.Join(linkdir, "sub", "f.txt")), strings.NewReader("pwned")))
	wantJSONError(t, resp, body, 403, "permission denied")
	resp, body = do(t, octet(t, asUserURL(filepath.Join(linkdir, "f.txt")), strings.NewReader("pwned")))
	wantJSONError(t, resp, body, 403, "permission denied")
	s := newSvc(t, "")
	_, err := s.MakeDir(asUser("user"), &fspb.MakeDirRequest{Path: filepath.Join(linkdir, "newdir", "deeper")})
	wantCode(t, err, connect.CodePermissionDenied, "permission denied")
	if ents, _ := os.ReadDir(vdir); len(ents) != 1 {
		t.Fatalf("something was created in the root-only directory: %v", ents)
	}
	wantUnchanged(t, secret)

	// A hard link to the secret in the user's home (what a user can make
	// where fs.protected_hardlinks is 0; made by root here) is not written.
	hard := filepath.Join(home, "hard.txt")
	if err := os.Link(secret, hard); err != nil {
		t.Fatal(err)
	}
	resp, body = do(t, octet(t, asUserURL(hard), strings.NewReader("pwned")))
	wantJSONError(t, resp, body, 403, "permission denied")
	wantUnchanged(t, secret)
	os.Remove(hard)

	// The user's own links work and write as the user.
	real := filepath.Join(home, "real.txt")
	mine := filepath.Join(home, "mine.txt")
	os.Symlink("real.txt", mine)
	resp, body = do(t, octet(t, asUserURL(mine), strings.NewReader("mine")))
	if resp.StatusCode != 200 {
		t.Fatalf("own link: %d %s", resp.StatusCode, body)
	}
	var st unix.Stat_t
	unix.Lstat(real, &st)
	if b, _ := os.ReadFile(real); string(b) != "mine" || st.Uid != u.UID || st.Gid != u.GID {
		t.Fatalf("own link: %q owned %d:%d", b, st.Uid, st.Gid)
	}
	// A user's upload into a root-only directory named directly (no
	// symlink) still works as with the reference: created for the user.
	resp, body = do(t, octet(t, asUserURL(filepath.Join(vdir, "direct", "d.txt")), strings.NewReader("d")))
	if resp.StatusCode != 200 {
		t.Fatalf("direct: %d %s", resp.StatusCode, body)
	}
	for _, p := range []string{filepath.Join(vdir, "direct"), filepath.Join(vdir, "direct", "d.txt")} {
		unix.Lstat(p, &st)
		if st.Uid != u.UID || st.Gid != u.GID {
			t.Fatalf("%s owned %d:%d", p, st.Uid, st.Gid)
		}
	}
	os.RemoveAll(filepath.Join(vdir, "direct"))

	// Root keeps following links as before.
	resp, body = do(t, octet(t, filesURL(srv, innocent, "username", "root"), strings.NewReader("by root")))
	if resp.StatusCode != 200 {
		t.Fatalf("root: %d %s", resp.StatusCode, body)
	}
	if b, _ := os.ReadFile(secret); string(b) != "by root" {
		t.Fatalf("root upload through the link: %q", b)
	}
}

// Item 4 against racing swaps: while uploads as user run, the user flips
// ~/race.txt between a file of their own and a symlink to the secret as
// fast as it can. The secret never changes.
func TestUploadAsUserRacingSymlinkSwaps(t *testing.T) {
	u := testUser(t)
	srv := newFiles(t)
	_, secret := victim(t)
	home := userDir(t, u)
	target := filepath.Join(home, "race.txt")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	swapper := exec.CommandContext(ctx, "setpriv", "--reuid="+fmt.Sprint(u.UID), "--regid="+fmt.Sprint(u.GID), "--clear-groups",
		"sh", "-c", fmt.Sprintf(`cd %s; while :; do ln -sfn %s race.tmp; mv -T race.tmp race.txt; echo x > race.f; mv -T race.f race.txt; done`, home, secret))
	if err := swapper.Start(); err != nil {
		t.Skipf("skipping: setpriv: %v", err)
	}
	defer func() { cancel(); swapper.Wait() }()
	ok := 0
	for i := 0; i < 300; i++ {
		resp, body := do(t, octet(t, filesURL(srv, target, "username", "user"), strings.NewReader("upload")))
		switch resp.StatusCode {
		case 200:
			ok++
		case 403, 400, 404:
		default:
			t.Logf("upload %d: %d %s", i, resp.StatusCode, body)
		}
		wantUnchanged(t, secret)
	}
	t.Logf("%d of 300 uploads landed in the user's file, none in the secret", ok)
}

// eventsUntil collects (name, type) pairs of a stream until marker shows.
func eventsUntil(t *testing.T, st *stream, marker string) []string {
	t.Helper()
	var out []string
	for {
		select {
		case m := <-st.msgs:
			ev := m.GetFilesystem()
			if ev == nil {
				continue
			}
			if ev.Name == marker {
				return out
			}
			out = append(out, ev.Name+" "+strings.TrimPrefix(ev.Type.String(), "EVENT_TYPE_"))
		case <-time.After(10 * time.Second):
			t.Fatalf("no marker event; got %v", out)
		}
	}
}

// collapse drops immediate repeats (inotify merges equal events only while
// they are unread, so a reader may see WRITE once or several times).
func collapse(evs []string) []string {
	var out []string
	for _, e := range evs {
		if len(out) == 0 || out[len(out)-1] != e {
			out = append(out, e)
		}
	}
	return out
}

// Item 7: a new file shows CREATE, CHMOD, WRITE and an overwrite CHMOD,
// WRITE, under the file's own name only, through WatchDir and through a
// polling watcher; the overwrite keeps the inode.
func TestUploadEventsLikeTheReference(t *testing.T) {
	u := testUser(t)
	s := newSvc(t, "")
	srv := newFiles(t)
	dir := userDir(t, u)
	st := startStream(t, s, context.Background(), &fspb.WatchDirRequest{Path: dir})
	cw, err := s.CreateWatcher(context.Background(), &fspb.CreateWatcherRequest{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	poll := func(marker string) []string {
		deadline := time.Now().Add(10 * time.Second)
		var out []string
		for time.Now().Before(deadline) {
			r, err := s.GetWatcherEvents(context.Background(), &fspb.GetWatcherEventsRequest{WatcherId: cw.WatcherId})
			if err != nil {
				t.Fatal(err)
			}
			for _, ev := range r.Events {
				if ev.Name == marker {
					return out
				}
				out = append(out, ev.Name+" "+strings.TrimPrefix(ev.Type.String(), "EVENT_TYPE_"))
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("polling watcher: no marker; got %v", out)
		return nil
	}
	p := filepath.Join(dir, "f.txt")
	for _, c := range []struct {
		name, user string
		want       []string
	}{
		{"new", "user", []string{"f.txt CREATE", "f.txt CHMOD", "f.txt WRITE"}},
		{"overwrite", "user", []string{"f.txt CHMOD", "f.txt WRITE"}},
		{"overwrite as root", "root", []string{"f.txt CHMOD", "f.txt WRITE"}},
	} {
		var before unix.Stat_t
		unix.Stat(p, &before)
		resp, body := do(t, octet(t, filesURL(srv, p, "username", c.user), strings.NewReader("content of "+c.name)))
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", c.name, resp.StatusCode, body)
		}
		marker := "marker-" + strings.ReplaceAll(c.name, " ", "-")
		os.WriteFile(filepath.Join(dir, marker), nil, 0o644)
		if got := collapse(eventsUntil(t, st, marker)); strings.Join(got, ",") != strings.Join(c.want, ",") {
			t.Errorf("%s, WatchDir: %v, want %v", c.name, got, c.want)
		}
		if got := collapse(poll(marker)); strings.Join(got, ",") != strings.Join(c.want, ",") {
			t.Errorf("%s, polling watcher: %v, want %v", c.name, got, c.want)
		}
		var after unix.Stat_t
		unix.Stat(p, &after)
		if b, _ := os.ReadFile(p); string(b) != "content of "+c.name || after.Uid != u.UID {
			t.Fatalf("%s: %q uid %d", c.name, b, after.Uid)
		}
		if c.name != "new" && after.Ino != before.Ino {
			t.Errorf("%s: inode %d became %d", c.name, before.Ino, after.Ino)
		}
	}
}

// Item 6/7: an overwrite needs no room for a second copy: a 45 MB file on
// a 50 MB tmpfs is overwritten with 10 MB.
func TestOverwriteNeedsNoSecondCopy(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=50m", "envd-fs-test", dir).CombinedOutput(); err != nil {
		t.Skipf("skipping: cannot mount tmpfs: %v %s", err, out)
	}
	defer exec.Command("umount", dir).Run()
	p := filepath.Join(dir, "big")
	if err := os.WriteFile(p, bytes.Repeat([]byte("o"), 45<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	var before, after unix.Stat_t
	unix.Stat(p, &before)
	srv := newFiles(t)
	payload := bytes.Repeat([]byte("n"), 10<<20)
	resp, body := do(t, octet(t, filesURL(srv, p), bytes.NewReader(payload)))
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	unix.Stat(p, &after)
	if b, _ := os.ReadFile(p); !bytes.Equal(b, payload) || after.Ino != before.Ino {
		t.Fatalf("%d bytes, inode %d → %d", len(b), before.Ino, after.Ino)
	}
	// Chunked, so the length is not known up front: the same.
	resp, body = do(t, octet(t, filesURL(srv, p), io.MultiReader(bytes.NewReader(payload[:5<<20]), bytes.NewReader(payload[5<<20:]))))
	if resp.StatusCode != 200 {
		t.Fatalf("chunked: %d %s", resp.StatusCode, body)
	}
	// A body larger than the disk fails before the old content is touched.
	resp, body = do(t, octet(t, filesURL(srv, p), bytes.NewReader(make([]byte, 60<<20))))
	wantJSONError(t, resp, body, 507, "not enough disk space available")
	if b, _ := os.ReadFile(p); !bytes.Equal(b, payload) {
		t.Fatalf("old content lost: %d bytes", len(b))
	}
}

// Item 6: a malformed chunked body answers 400 (it was 500), for a raw
// and a multipart upload, and leaves no file.
func TestMalformedChunkedBody(t *testing.T) {
	srv := newFiles(t)
	dir := t.TempDir()
	addr := strings.TrimPrefix(srv.URL, "http://")
	for _, c := range []struct{ name, ctype, body string }{
		{"octet", "application/octet-stream", "5\r\nhello\r\nzz\r\nxx\r\n0\r\n\r\n"},
		{"multipart", "multipart/form-data; boundary=B", "10\r\n--B\r\nContent-Di\r\nnot-hex\r\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, c.name)
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			fmt.Fprintf(conn, "POST /files?path=%s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n%s",
				url.QueryEscape(p), c.ctype, c.body)
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			wantJSONError(t, resp, b, 400, "")
			if _, err := os.Lstat(p); err == nil {
				t.Fatal("file left behind")
			}
		})
	}
}

// Item 5: a name that is not UTF-8 no longer breaks ListDir or WatchDir;
// it is carried escaped, and the escaped name works for Stat, download,
// upload and Remove. Uploads report the same form.
func TestNonUTF8Names(t *testing.T) {
	s := newSvc(t, "")
	srv := newFiles(t)
	dir := t.TempDir()
	st := startStream(t, s, context.Background(), &fspb.WatchDirRequest{Path: dir})
	bad := filepath.Join(dir, "bad\xffname")
	if err := os.WriteFile(bad, []byte("bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	const shown = "bad\uefffname"
	st.waitFor(t, shown, fspb.EventType_EVENT_TYPE_CREATE)

	ls, err := s.ListDir(context.Background(), &fspb.ListDirRequest{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	if len(ls.Entries) != 1 || ls.Entries[0].Name != shown || ls.Entries[0].Path != filepath.Join(dir, shown) {
		t.Fatalf("listing: %v", ls.Entries)
	}
	got := ls.Entries[0].Path
	if _, err := s.Stat(context.Background(), &fspb.StatRequest{Path: got}); err != nil {
		t.Fatalf("stat by the listed path: %v", err)
	}
	resp, body := do(t, mustReq(t, http.MethodGet, filesURL(srv, got), nil))
	if resp.StatusCode != 200 || string(body) != "bytes" {
		t.Fatalf("download by the listed path: %d %q", resp.StatusCode, body)
	}
	// An upload to the raw name (as a client sending %FF would) and to the
	// escaped one both land on the same file and report the escaped name.
	for _, p := range []string{bad, got} {
		resp, body = do(t, octet(t, filesURL(srv, p), strings.NewReader("new")))
		if resp.StatusCode != 200 || !strings.Contains(string(body), `"name":"`+shown+`"`) {
			t.Fatalf("upload to %q: %d %s", p, resp.StatusCode, body)
		}
	}
	if b, _ := os.ReadFile(bad); string(b) != "new" {
		t.Fatalf("content %q", b)
	}
	// The stream stays open: later events still arrive.
	os.WriteFile(filepath.Join(dir, "after"), nil, 0o644)
	st.waitFor(t, "after", fspb.EventType_EVENT_TYPE_CREATE)
	if _, err := s.Remove(context.Background(), &fspb.RemoveRequest{Path: got}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(bad); err == nil {
		t.Fatal("not removed")
	}

	// A real name that holds a character of the escape range is shown
	// escaped and found by both forms.
	pua := filepath.Join(dir, "pua\uef80")
	os.WriteFile(pua, nil, 0o644)
	ls, err = s.ListDir(context.Background(), &fspb.ListDirRequest{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ls.Entries {
		if strings.HasPrefix(e.Name, "pua") {
			if e.Name != "pua\uefee\uefbe\uef80" {
				t.Fatalf("pua name %q", e.Name)
			}
			for _, p := range []string{e.Path, pua} {
				if _, err := s.Stat(context.Background(), &fspb.StatRequest{Path: p}); err != nil {
					t.Fatalf("stat %q: %v", p, err)
				}
			}
		}
	}
}

func TestWireNameRoundTrip(t *testing.T) {
	for _, s := range []string{"", "plain", "bad\xffname", "\x80\x81", "é", "pua\uef80\uefff", "mix\xee\xbe", "\xee\xbe\x80\xc3"} {
		w := wireName(s)
		if !utf8Valid(w) {
			t.Fatalf("%q → %q is not UTF-8", s, w)
		}
		if back := unescapeName(w); back != s {
			t.Fatalf("%q → %q → %q", s, w, back)
		}
	}
}
func utf8Valid(s string) bool { return utf8.ValidString(s) }

// Item 6: polling watchers share inotify instances, are bounded per caller
// (resource_exhausted) and in all, and abandoned ones expire.
func TestPollingWatchersBoundedAndShared(t *testing.T) {
	testUser(t)
	s := newSvc(t, "")
	dir := t.TempDir()
	fds := inotifyFds(t)
	var ids []string
	for range MaxPollersPerUser {
		r, err := s.CreateWatcher(asUser("root"), &fspb.CreateWatcherRequest{Path: dir, Recursive: true})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.WatcherId)
	}
	// 64 watchers: one inotify instance (each used to take one of the
	// 128 a user has VM-wide).
	if n := inotifyFds(t) - fds; n > 1 {
		t.Fatalf("%d watchers hold %d inotify fds", len(ids), n)
	}
	_, err := s.CreateWatcher(asUser("root"), &fspb.CreateWatcherRequest{Path: dir})
	wantCode(t, err, connect.CodeResourceExhausted, "too many polling watchers for user 'root' (limit 64)")
	// Another caller has room of its own.
	r, err := s.CreateWatcher(asUser("user"), &fspb.CreateWatcherRequest{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	// Removing one makes room again.
	if _, err := s.RemoveWatcher(context.Background(), &fspb.RemoveWatcherRequest{WatcherId: ids[0]}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateWatcher(asUser("root"), &fspb.CreateWatcherRequest{Path: dir}); err != nil {
		t.Fatal(err)
	}
	// The service-wide bound.
	s.mu.Lock()
	s.maxPollers = len(s.pollers)
	s.mu.Unlock()
	_, err = s.CreateWatcher(asUser("user"), &fspb.CreateWatcherRequest{Path: dir})
	wantCode(t, err, connect.CodeResourceExhausted, "too many polling watchers (limit")

	// Expiry: everything not polled within pollerIdle goes at the next
	// CreateWatcher; the one just polled stays.
	s.mu.Lock()
	s.maxPollers = MaxPollers
	s.pollerIdle = 300 * time.Millisecond
	s.mu.Unlock()
	time.Sleep(400 * time.Millisecond)
	if _, err := s.GetWatcherEvents(context.Background(), &fspb.GetWatcherEventsRequest{WatcherId: r.WatcherId}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateWatcher(asUser("root"), &fspb.CreateWatcherRequest{Path: dir}); err != nil {
		t.Fatal(err)
	}
	_, err = s.GetWatcherEvents(context.Background(), &fspb.GetWatcherEventsRequest{WatcherId: ids[1]})
	wantCode(t, err, connect.CodeNotFound, "")
	if _, err := s.GetWatcherEvents(context.Background(), &fspb.GetWatcherEventsRequest{WatcherId: r.WatcherId}); err != nil {
		t.Fatalf("a polled watcher expired: %v", err)
	}
	s.mu.Lock()
	n := len(s.pollers)
	s.mu.Unlock()
	if n != 2 {
		t.Fatalf("%d pollers left, want 2", n)
	}
}

// Item 6: one unwatchable subdirectory no longer ends a recursive WatchDir.
func TestWatchDirSkipsUnwatchableSubdir(t *testing.T) {
	s := newSvc(t, "")
	// The start event comes only once the whole tree is watched.
	startStream(t, s, context.Background(), &fspb.WatchDirRequest{Path: "/proc/1", Recursive: true})
}

// inotifyFds counts this process's inotify instances.
func inotifyFds(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && l == "anon_inode:inotify" {
			n++
		}
	}
	return n
}

// Item 4's siblings: Remove, Move and compose as user through a planted
// symlinked directory touch nothing in the root-only place it leads to.
func TestRemoveMoveComposeAsUserThroughPlantedLinks(t *testing.T) {
	u := testUser(t)
	s := newSvc(t, "")
	srv := newFiles(t)
	vdir, secret := victim(t)
	home := userDir(t, u)
	linkdir := filepath.Join(home, "linkdir")
	os.Symlink(vdir, linkdir)
	mine := filepath.Join(home, "mine.txt")
	os.WriteFile(mine, []byte("mine"), 0o644)
	os.Chown(mine, int(u.UID), int(u.GID))

	_, err := s.Remove(asUser("user"), &fspb.RemoveRequest{Path: filepath.Join(linkdir, "secret")})
	wantCode(t, err, connect.CodePermissionDenied, "permission denied")
	_, err = s.Move(asUser("user"), &fspb.MoveRequest{Source: mine, Destination: filepath.Join(linkdir, "secret")})
	wantCode(t, err, connect.CodePermissionDenied, "permission denied")
	_, err = s.Move(asUser("user"), &fspb.MoveRequest{Source: filepath.Join(linkdir, "secret"), Destination: filepath.Join(home, "stolen")})
	wantCode(t, err, connect.CodePermissionDenied, "permission denied")
	body := fmt.Sprintf(`{"source_paths":[%q],"destination":%q,"username":"user"}`, mine, filepath.Join(linkdir, "composed"))
	resp, b := do(t, mustReq(t, http.MethodPost, srv.URL+"/files/compose", strings.NewReader(body)))
	wantJSONError(t, resp, b, 403, "permission denied")
	wantUnchanged(t, secret)
	if ents, _ := os.ReadDir(vdir); len(ents) != 1 {
		t.Fatalf("root-only directory changed: %v", ents)
	}
	// Without links, as before: the user's own files move and go.
	if _, err := s.Move(asUser("user"), &fspb.MoveRequest{Source: mine, Destination: filepath.Join(home, "sub", "moved")}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Remove(asUser("user"), &fspb.RemoveRequest{Path: filepath.Join(home, "sub")}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(home, "sub")); err == nil {
		t.Fatal("not removed")
	}
	// Removing the link itself removes only the link.
	if _, err := s.Remove(asUser("user"), &fspb.RemoveRequest{Path: linkdir}); err != nil {
		t.Fatal(err)
	}
	wantUnchanged(t, secret)
}

// The user's filesystem identity never leaks to another goroutine or to a
// thread the runtime starts meanwhile: while many goroutines make files
// under withFSUser, every file made outside it is root's, and every file
// made inside it is the user's.
func TestFSUserIdentityStaysOnItsThread(t *testing.T) {
	u := testUser(t)
	dir := userDir(t, u)
	os.Chmod(dir, 0o777)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := range 50 {
				p := filepath.Join(dir, fmt.Sprintf("u-%d-%d", g, i))
				err := withFSUser(u, func() error {
					fd, err := unix.Open(p, unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
					if err == nil {
						unix.Close(fd)
					}
					return err
				})
				if err != nil {
					t.Error(err)
					return
				}
				time.Sleep(time.Microsecond) // let the scheduler move things around
			}
		}()
		go func() {
			defer wg.Done()
			for i := range 50 {
				p := filepath.Join(dir, fmt.Sprintf("r-%d-%d", g, i))
				if err := os.WriteFile(p, nil, 0o644); err != nil {
					t.Error(err)
					return
				}
				runtime.Gosched()
			}
		}()
	}
	wg.Wait()
	ents, _ := os.ReadDir(dir)
	if len(ents) != 16*100 {
		t.Fatalf("%d files", len(ents))
	}
	for _, e := range ents {
		var st unix.Stat_t
		unix.Lstat(filepath.Join(dir, e.Name()), &st)
		want := uint32(0)
		if strings.HasPrefix(e.Name(), "u-") {
			want = u.UID
		}
		if st.Uid != want {
			t.Fatalf("%s owned by %d, want %d", e.Name(), st.Uid, want)
		}
	}
}
