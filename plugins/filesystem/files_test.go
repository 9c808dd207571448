package filesystem

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	controlpb "github.com/envd-project/envd/gen/control"
	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/plugins/pluginkit/defaults"
)

func newFiles(t testing.TB) *httptest.Server {
	t.Helper()
	h := NewFilesHandler(zap.NewNop(), defaults.NewStore(&controlpb.Config{DefaultUser: "root"}), newDB())
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func filesURL(srv *httptest.Server, path string, extra ...string) string {
	q := url.Values{}
	if path != "" {
		q.Set("path", path)
	}
	for i := 0; i+1 < len(extra); i += 2 {
		q.Set(extra[i], extra[i+1])
	}
	return srv.URL + "/files?" + q.Encode()
}

// client does not ask for gzip on its own, so tests see what the server sends.
var client = &http.Client{Transport: &http.Transport{DisableCompression: true}}

func do(t testing.TB, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func wantJSONError(t testing.TB, resp *http.Response, body []byte, status int, msgPart string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, status)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Fatalf("content-type %q", ct)
	}
	if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatal("no nosniff")
	}
	var e struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Code != status || !bytes.HasSuffix(body, []byte("}\n")) {
		t.Fatalf("body %q", body)
	}
	if !strings.Contains(e.Message, msgPart) {
		t.Fatalf("message %q does not contain %q", e.Message, msgPart)
	}
}

func octet(t testing.TB, u string, body io.Reader, hdr ...string) *http.Request {
	req, _ := http.NewRequest(http.MethodPost, u, body)
	req.Header.Set("Content-Type", "application/octet-stream")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	return req
}

type part struct{ field, filename, data string }

func multipartBody(parts ...part) (string, []byte) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, p := range parts {
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", fmt.Sprintf(`form-data; name=%q; filename=%q`, p.field, p.filename))
		h.Set("Content-Type", "application/octet-stream")
		w, _ := mw.CreatePart(h)
		w.Write([]byte(p.data))
	}
	mw.Close()
	return mw.FormDataContentType(), buf.Bytes()
}

func TestDownload(t *testing.T) {
	srv := newFiles(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "data.txt")
	content := strings.Repeat("hello world ", 1000)
	os.WriteFile(p, []byte(content), 0o644)

	req, _ := http.NewRequest(http.MethodGet, filesURL(srv, p), nil)
	resp, body := do(t, req)
	if resp.StatusCode != 200 || string(body) != content {
		t.Fatalf("status %d, %d bytes", resp.StatusCode, len(body))
	}
	if resp.Header.Get("Content-Disposition") != "inline; filename=data.txt" || resp.Header.Get("Accept-Ranges") != "bytes" ||
		resp.Header.Get("Vary") != "Accept-Encoding" || resp.Header.Get("Last-Modified") == "" ||
		resp.Header.Get("Content-Length") != fmt.Sprint(len(content)) {
		t.Fatalf("headers %v", resp.Header)
	}

	// gzip on request (the transport's automatic decompression is off when
	// Accept-Encoding is set by hand).
	req, _ = http.NewRequest(http.MethodGet, filesURL(srv, p), nil)
	req.Header.Set("Accept-Encoding", "gzip")
	resp, body = do(t, req)
	if resp.Header.Get("Content-Encoding") != "gzip" || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Fatalf("gzip headers %v", resp.Header)
	}
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if plain, _ := io.ReadAll(zr); string(plain) != content {
		t.Fatal("gzip content differs")
	}

	// Range, and Range forces identity even when gzip is asked for.
	req, _ = http.NewRequest(http.MethodGet, filesURL(srv, p), nil)
	req.Header.Set("Range", "bytes=6-10")
	req.Header.Set("Accept-Encoding", "gzip")
	resp, body = do(t, req)
	if resp.StatusCode != 206 || string(body) != "world" || resp.Header.Get("Content-Encoding") != "" {
		t.Fatalf("range: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	req, _ = http.NewRequest(http.MethodGet, filesURL(srv, p), nil)
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-", len(content)+10))
	resp, _ = do(t, req)
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Fatalf("range beyond end: %d", resp.StatusCode)
	}

	// Encoding negotiation.
	for _, c := range []struct {
		ae     string
		status int
		enc    string
	}{
		{"identity;q=0", 406, ""},
		{"*;q=0", 406, ""},
		{"*;q=0, identity", 200, ""},
		{"*", 200, ""},
		{"*, identity;q=0", 200, "gzip"},
		{"gzip;q=0", 200, ""},
		{"GZIP;q=0.5, identity;q=0.1", 200, "gzip"},
		{"br", 200, ""},
	} {
		req, _ = http.NewRequest(http.MethodGet, filesURL(srv, p), nil)
		req.Header.Set("Accept-Encoding", c.ae)
		resp, body = do(t, req)
		if resp.StatusCode != c.status || resp.Header.Get("Content-Encoding") != c.enc {
			t.Fatalf("Accept-Encoding %q: %d %q", c.ae, resp.StatusCode, resp.Header.Get("Content-Encoding"))
		}
		if c.status == 406 {
			wantJSONError(t, resp, body, 406, "no acceptable encoding found, supported: [gzip]")
		}
	}

	// Errors.
	req, _ = http.NewRequest(http.MethodGet, filesURL(srv, filepath.Join(dir, "missing")), nil)
	resp, body = do(t, req)
	wantJSONError(t, resp, body, 404, fmt.Sprintf("path '%s' does not exist", filepath.Join(dir, "missing")))
	req, _ = http.NewRequest(http.MethodGet, filesURL(srv, dir), nil)
	resp, body = do(t, req)
	wantJSONError(t, resp, body, 400, "is a directory")
	req, _ = http.NewRequest(http.MethodGet, filesURL(srv, p, "username", "no-such-user-xyz"), nil)
	resp, body = do(t, req)
	wantJSONError(t, resp, body, 401, "error looking up user 'no-such-user-xyz': user: unknown user no-such-user-xyz")
	req, _ = http.NewRequest(http.MethodGet, filesURL(srv, "~other/x"), nil)
	resp, body = do(t, req)
	wantJSONError(t, resp, body, 400, "cannot expand user-specific home dir")
	req, _ = http.NewRequest(http.MethodGet, filesURL(srv, "/"+strings.Repeat("d", 5000)), nil)
	resp, body = do(t, req)
	wantJSONError(t, resp, body, 500, "")
	req, _ = http.NewRequest(http.MethodDelete, filesURL(srv, p), nil)
	resp, body = do(t, req)
	wantJSONError(t, resp, body, 405, "")
}

func readMeta(t testing.TB, p string) map[string]string {
	return newNames(newDB()).metadata(p)
}

func TestUploadOctetStream(t *testing.T) {
	u := testUser(t)
	srv := newFiles(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "new", "sub", "f.bin")
	resp, body := do(t, octet(t, filesURL(srv, p, "username", "user"), strings.NewReader("payload"), "X-Metadata-Owner", "me", "x-metadata-Kind", "test"))
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	var res []uploadResult
	if err := json.Unmarshal(body, &res); err != nil || len(res) != 1 || res[0].Path != p || res[0].Name != "f.bin" ||
		res[0].Type != "file" || res[0].Metadata["owner"] != "me" || res[0].Metadata["kind"] != "test" {
		t.Fatalf("result %s", body)
	}
	if b, _ := os.ReadFile(p); string(b) != "payload" {
		t.Fatalf("content %q", b)
	}
	for _, q := range []string{p, filepath.Dir(p), filepath.Join(dir, "new")} {
		var st unix.Stat_t
		unix.Lstat(q, &st)
		if st.Uid != u.UID || st.Gid != u.GID {
			t.Fatalf("%s owned by %d:%d", q, st.Uid, st.Gid)
		}
	}
	var st unix.Stat_t
	unix.Stat(p, &st)
	if st.Mode&0o777 != 0o644 && st.Mode&0o777 != 0o666&^uint32(umask()) {
		t.Fatalf("mode %o", st.Mode&0o777)
	}

	// Overwrite an existing root-owned file with odd permissions and extra
	// xattrs, through a symlink, as root: written in place (same inode),
	// mode and owner kept (a target this call did not create is never
	// chowned), metadata replaced (none sent → none left), other xattrs
	// kept, symlink kept.
	existing := filepath.Join(dir, "existing.txt")
	os.WriteFile(existing, []byte("old content that is longer"), 0o640)
	unix.Setxattr(existing, MetadataPrefix+"old", []byte("1"), 0)
	unix.Setxattr(existing, "user.keep", []byte("yes"), 0)
	var before unix.Stat_t
	unix.Stat(existing, &before)
	link := filepath.Join(dir, "link.txt")
	os.Symlink("existing.txt", link)
	resp, body = do(t, octet(t, filesURL(srv, link, "username", "root"), strings.NewReader("new")))
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if b, _ := os.ReadFile(existing); string(b) != "new" {
		t.Fatalf("content %q", b)
	}
	if fi, _ := os.Lstat(link); fi.Mode()&os.ModeSymlink == 0 {
		t.Fatal("symlink replaced by a file")
	}
	unix.Stat(existing, &st)
	if st.Mode&0o777 != 0o640 || st.Uid != 0 || st.Ino != before.Ino {
		t.Fatalf("mode %o uid %d inode %d (was %d)", st.Mode&0o777, st.Uid, st.Ino, before.Ino)
	}
	if md := readMeta(t, existing); len(md) != 0 {
		t.Fatalf("old metadata survived: %v", md)
	}
	if v, err := getxattr(existing, "user.keep"); err != nil || string(v) != "yes" {
		t.Fatalf("user.keep lost: %q %v", v, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 3 {
		t.Fatalf("stray files: %v", ents)
	}

	// gzip request body.
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	zw.Write([]byte("compressed payload"))
	zw.Close()
	resp, body = do(t, octet(t, filesURL(srv, filepath.Join(dir, "gz.txt")), bytes.NewReader(zb.Bytes()), "Content-Encoding", "gzip"))
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "gz.txt")); string(b) != "compressed payload" {
		t.Fatalf("gz content %q", b)
	}
}

func TestUploadErrors(t *testing.T) {
	srv := newFiles(t)
	dir := t.TempDir()
	target := filepath.Join(dir, "t.txt")
	os.WriteFile(target, []byte("original"), 0o644)
	untouched := func() {
		t.Helper()
		if b, _ := os.ReadFile(target); string(b) != "original" {
			t.Fatalf("target changed to %q", b)
		}
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if e.Name() != "t.txt" && e.Name() != "d" {
				t.Fatalf("left behind: %s", e.Name())
			}
		}
	}
	// Bad gzip header, and a corrupt gzip stream.
	resp, body := do(t, octet(t, filesURL(srv, target), strings.NewReader("not gzip at all"), "Content-Encoding", "gzip"))
	wantJSONError(t, resp, body, 400, "error decompressing request body")
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	zw.Write(bytes.Repeat([]byte("abcdefgh"), 10000))
	zw.Close()
	bad := zb.Bytes()
	bad[len(bad)-6] ^= 0xff // break the CRC
	resp, body = do(t, octet(t, filesURL(srv, target), bytes.NewReader(bad), "Content-Encoding", "gzip"))
	wantJSONError(t, resp, body, 400, "error decompressing request body")
	untouched()
	resp, body = do(t, octet(t, filesURL(srv, filepath.Join(dir, "new.txt")), bytes.NewReader(bad), "Content-Encoding", "gzip"))
	wantJSONError(t, resp, body, 400, "error decompressing request body")
	untouched()

	resp, body = do(t, octet(t, filesURL(srv, target), strings.NewReader("x"), "Content-Encoding", "br"))
	wantJSONError(t, resp, body, 400, "unsupported Content-Encoding: br")
	resp, body = do(t, octet(t, filesURL(srv, ""), strings.NewReader("x")))
	wantJSONError(t, resp, body, 400, "path query parameter is required for raw body upload")
	req := octet(t, filesURL(srv, target), strings.NewReader("x"))
	req.Header.Set("Content-Type", "text/plain")
	resp, body = do(t, req)
	wantJSONError(t, resp, body, 400, "unsupported content type: text/plain, expected multipart/form-data or application/octet-stream")
	resp, body = do(t, octet(t, filesURL(srv, target, "username", "no-such-user-xyz"), strings.NewReader("x")))
	wantJSONError(t, resp, body, 401, "unknown user")
	resp, body = do(t, octet(t, filesURL(srv, target), strings.NewReader("x"), "X-Metadata-Bad", "caf\u00e9"))
	wantJSONError(t, resp, body, 400, "invalid metadata")
	resp, body = do(t, octet(t, filesURL(srv, target), strings.NewReader("x"), "X-Metadata-Big", strings.Repeat("v", 4100)))
	wantJSONError(t, resp, body, 400, "invalid metadata")
	resp, body = do(t, octet(t, filesURL(srv, "~other/x"), strings.NewReader("x")))
	wantJSONError(t, resp, body, 400, "cannot expand")
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	resp, body = do(t, octet(t, filesURL(srv, filepath.Join(dir, "d")), strings.NewReader("x")))
	wantJSONError(t, resp, body, 400, "path is a directory")
	resp, body = do(t, octet(t, filesURL(srv, filepath.Join(target, "under")), strings.NewReader("x")))
	wantJSONError(t, resp, body, 500, "path is a file")
	resp, body = do(t, octet(t, filesURL(srv, "/tmp/"+strings.Repeat("e", 5000)), strings.NewReader("x")))
	wantJSONError(t, resp, body, 500, "")
	untouched()

	// Truncated multipart body: the part's data ends without a boundary.
	ct, mb := multipartBody(part{"file", target, strings.Repeat("z", 100000)})
	req, _ = http.NewRequest(http.MethodPost, filesURL(srv, ""), bytes.NewReader(mb[:len(mb)/2]))
	req.Header.Set("Content-Type", ct)
	resp, body = do(t, req)
	wantJSONError(t, resp, body, 400, "")
	untouched()
	req, _ = http.NewRequest(http.MethodPost, filesURL(srv, ""), bytes.NewReader(mb[:len(mb)/2]))
	req.Header.Set("Content-Type", ct)
	mbNew := bytes.Replace(mb[:len(mb)/2], []byte(target), []byte(filepath.Join(dir, "fresh.txt")), 1)
	req, _ = http.NewRequest(http.MethodPost, filesURL(srv, ""), bytes.NewReader(mbNew))
	req.Header.Set("Content-Type", ct)
	resp, body = do(t, req)
	wantJSONError(t, resp, body, 400, "")
	untouched()
	// A multipart part without filename and no path parameter.
	ct, mb = multipartBody(part{"file", "", "x"})
	req, _ = http.NewRequest(http.MethodPost, filesURL(srv, ""), bytes.NewReader(mb))
	req.Header.Set("Content-Type", ct)
	resp, body = do(t, req)
	wantJSONError(t, resp, body, 400, "filename")
	// Two parts for the same path.
	ct, mb = multipartBody(part{"file", "a", "1"}, part{"file", "b", "2"})
	req, _ = http.NewRequest(http.MethodPost, filesURL(srv, filepath.Join(dir, "same")), bytes.NewReader(mb))
	req.Header.Set("Content-Type", ct)
	resp, body = do(t, req)
	wantJSONError(t, resp, body, 400, "you cannot upload multiple files to the same path")
}

func TestUploadMultipart(t *testing.T) {
	u := testUser(t)
	srv := newFiles(t)
	dir := t.TempDir()
	a, b := filepath.Join(dir, "x", "a.txt"), filepath.Join(dir, "b.txt")
	// Filenames are full paths, used verbatim; non-"file" fields are skipped;
	// relative names go under the user's home.
	rel := fmt.Sprintf("envd-fs-test-%d.txt", os.Getpid())
	defer os.Remove(filepath.Join(u.Home, rel))
	ct, mb := multipartBody(part{"file", a, "AAA"}, part{"other", "/etc/should-not-write", "x"}, part{"file", b, "BB"}, part{"file", rel, "C"})
	req, _ := http.NewRequest(http.MethodPost, filesURL(srv, "", "username", "user"), bytes.NewReader(mb))
	req.Header.Set("Content-Type", ct)
	req.Header.Set("X-Metadata-Tag", "t1")
	resp, body := do(t, req)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	var res []uploadResult
	json.Unmarshal(body, &res)
	if len(res) != 3 || res[0].Path != a || res[1].Path != b || res[2].Path != filepath.Join(u.Home, rel) || res[0].Metadata["tag"] != "t1" {
		t.Fatalf("result %s", body)
	}
	for p, want := range map[string]string{a: "AAA", b: "BB", filepath.Join(u.Home, rel): "C"} {
		if got, _ := os.ReadFile(p); string(got) != want {
			t.Fatalf("%s: %q", p, got)
		}
	}
	if _, err := os.Stat("/etc/should-not-write"); err == nil {
		t.Fatal("non-file field written")
	}
	// Space reserved ahead of the data (fallocate) is given back.
	var st unix.Stat_t
	unix.Stat(a, &st)
	if st.Size != 3 || st.Blocks*512 > 64<<10 {
		t.Fatalf("size %d, %d bytes allocated", st.Size, st.Blocks*512)
	}
	// One part with the path parameter; gzip over the whole multipart body.
	ct, mb = multipartBody(part{"file", "ignored-name", "via path param"})
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	zw.Write(mb)
	zw.Close()
	req, _ = http.NewRequest(http.MethodPost, filesURL(srv, a), &zb)
	req.Header.Set("Content-Type", ct)
	req.Header.Set("Content-Encoding", "gzip")
	resp, body = do(t, req)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if got, _ := os.ReadFile(a); string(got) != "via path param" {
		t.Fatalf("got %q", got)
	}
	// No file parts → [].
	ct, mb = multipartBody(part{"other", "x", "y"})
	req, _ = http.NewRequest(http.MethodPost, filesURL(srv, ""), bytes.NewReader(mb))
	req.Header.Set("Content-Type", ct)
	resp, body = do(t, req)
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "[]" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
}

// TestUploadNoSpace fills a tiny tmpfs: a full disk answers 507, a full
// inode table 507 too, and nothing partial is left.
func TestUploadNoSpace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: mounting a small tmpfs needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=8", "envd-fs-test", dir).CombinedOutput(); err != nil {
		t.Skipf("skipping: cannot mount tmpfs: %v %s", err, out)
	}
	defer exec.Command("umount", dir).Run()
	srv := newFiles(t)
	resp, body := do(t, octet(t, filesURL(srv, filepath.Join(dir, "big")), bytes.NewReader(make([]byte, 2<<20))))
	wantJSONError(t, resp, body, 507, "not enough disk space available")
	if _, err := os.Stat(filepath.Join(dir, "big")); err == nil {
		t.Fatal("partial file left")
	}
	// Replacing an existing file: the old content survives the failure.
	os.WriteFile(filepath.Join(dir, "keep"), []byte("old"), 0o644)
	resp, body = do(t, octet(t, filesURL(srv, filepath.Join(dir, "keep")), bytes.NewReader(make([]byte, 2<<20))))
	wantJSONError(t, resp, body, 507, "not enough disk space available")
	if b, _ := os.ReadFile(filepath.Join(dir, "keep")); string(b) != "old" {
		t.Fatalf("old content lost: %d bytes", len(b))
	}
	for i := 0; ; i++ {
		if i > 20 {
			t.Fatal("inodes never ran out")
		}
		resp, body = do(t, octet(t, filesURL(srv, filepath.Join(dir, fmt.Sprint("n", i))), strings.NewReader("x")))
		if resp.StatusCode == 507 {
			wantJSONError(t, resp, body, 507, "not enough inodes available")
			break
		}
	}
}

func TestCompose(t *testing.T) {
	u := testUser(t)
	srv := newFiles(t)
	dir := t.TempDir()
	var srcs []string
	for i, s := range []string{"one,", "two,", "three"} {
		p := filepath.Join(dir, fmt.Sprint("part", i))
		os.WriteFile(p, []byte(s), 0o644)
		srcs = append(srcs, p)
	}
	post := func(v any) (*http.Response, []byte) {
		b, _ := json.Marshal(v)
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/files/compose", bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
		return do(t, req)
	}
	dst := filepath.Join(dir, "out", "joined.txt")
	resp, body := post(map[string]any{"source_paths": srcs, "destination": dst, "username": "user"})
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	var res uploadResult
	json.Unmarshal(body, &res)
	if res.Path != dst || res.Name != "joined.txt" || res.Type != "file" {
		t.Fatalf("result %s", body)
	}
	if b, _ := os.ReadFile(dst); string(b) != "one,two,three" {
		t.Fatalf("content %q", b)
	}
	var st unix.Stat_t
	unix.Stat(dst, &st)
	if st.Uid != u.UID {
		t.Fatal("not owned by the user")
	}
	for _, s := range srcs {
		if _, err := os.Stat(s); err == nil {
			t.Fatal("source not deleted")
		}
	}
	os.WriteFile(srcs[0], []byte("x"), 0o644)
	resp, body = post(map[string]any{"source_paths": []string{}, "destination": dst})
	wantJSONError(t, resp, body, 400, "")
	resp, body = post(map[string]any{"source_paths": []string{srcs[0]}})
	wantJSONError(t, resp, body, 400, "destination")
	resp, body = post(map[string]any{"source_paths": []string{srcs[0]}, "destination": srcs[0]})
	wantJSONError(t, resp, body, 400, "same as the destination")
	resp, body = post(map[string]any{"source_paths": []string{dir}, "destination": dst})
	wantJSONError(t, resp, body, 400, "not a regular file")
	resp, body = post(map[string]any{"source_paths": []string{srcs[1]}, "destination": dst})
	wantJSONError(t, resp, body, 404, "does not exist")
	resp, body = post(map[string]any{"source_paths": []string{srcs[0]}, "destination": dst, "username": "no-such-user-xyz"})
	wantJSONError(t, resp, body, 401, "")
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/files/compose", strings.NewReader("{bad"))
	resp, body = do(t, req)
	wantJSONError(t, resp, body, 400, "invalid request body")
	if ents, _ := os.ReadDir(filepath.Join(dir, "out")); len(ents) != 1 {
		t.Fatalf("temporary files left: %v", ents)
	}
}

func umask() int {
	m := unix.Umask(0)
	unix.Umask(m)
	return m
}

// TestUploadWatchEvents: what a WatchDir client sees of uploads is what the
// JS SDK's watch tests wait for: CREATE and WRITE under the file's own name,
// for a new file and for an overwritten one, and no staging pseudo-names.
func TestUploadWatchEvents(t *testing.T) {
	s := newSvc(t, "")
	srv := newFiles(t)
	dir := t.TempDir()
	st := startStream(t, s, context.Background(), &fspb.WatchDirRequest{Path: dir})
	p := filepath.Join(dir, "watched.txt")
	resp, body := do(t, octet(t, filesURL(srv, p), strings.NewReader("first")))
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	st.waitFor(t, "watched.txt", fspb.EventType_EVENT_TYPE_CREATE)
	st.waitFor(t, "watched.txt", fspb.EventType_EVENT_TYPE_WRITE)
	ct, mb := multipartBody(part{"file", p, "second, longer"})
	req, _ := http.NewRequest(http.MethodPost, filesURL(srv, ""), bytes.NewReader(mb))
	req.Header.Set("Content-Type", ct)
	resp, body = do(t, req)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	st.waitFor(t, "watched.txt", fspb.EventType_EVENT_TYPE_WRITE)
	os.WriteFile(filepath.Join(dir, "marker"), nil, 0o644)
	// Everything up to the marker: no "#<inode>" names.
	for {
		select {
		case m := <-st.msgs:
			ev := m.GetFilesystem()
			if ev == nil {
				continue
			}
			if strings.HasPrefix(ev.Name, "#") {
				t.Fatalf("staging pseudo-name leaked: %v", ev)
			}
			if ev.Name == "marker" {
				return
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no marker event")
		}
	}
}

// Compressors are reused across downloads: concurrent and back-to-back gzip
// downloads of different files must each decode to their own file.
func TestGzipDownloadsReuseCompressors(t *testing.T) {
	srv := newFiles(t)
	dir := t.TempDir()
	const n = 8
	contents := make([]string, n)
	for i := range contents {
		contents[i] = strings.Repeat(fmt.Sprintf("file %d line\n", i), 2000+i*500)
		os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), []byte(contents[i]), 0o644)
	}
	errs := make(chan error, n*3)
	for round := 0; round < 3; round++ {
		for i := 0; i < n; i++ {
			go func(i int) {
				req, _ := http.NewRequest(http.MethodGet, filesURL(srv, filepath.Join(dir, fmt.Sprint(i))), nil)
				req.Header.Set("Accept-Encoding", "gzip")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					errs <- err
					return
				}
				defer resp.Body.Close()
				zr, err := gzip.NewReader(resp.Body)
				if err != nil {
					errs <- fmt.Errorf("file %d: %w", i, err)
					return
				}
				plain, err := io.ReadAll(zr)
				if err != nil || string(plain) != contents[i] {
					errs <- fmt.Errorf("file %d: %d bytes, err %v", i, len(plain), err)
					return
				}
				errs <- nil
			}(i)
		}
	}
	for i := 0; i < n*3; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
