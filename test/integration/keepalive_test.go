package integration

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/gen/filesystem/filesystemconnect"
	"github.com/envd-project/envd/test/envdtest"
)

// oneConn is an HTTP/1.1 client that notes, for every request, whether it
// went out on the connection the previous one used.
type oneConn struct {
	client *http.Client
	last   string // local address of the connection last used
	same   bool
}

func newOneConn() *oneConn {
	return &oneConn{client: &http.Client{Timeout: 30 * time.Second,
		Transport: &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1, DisableCompression: true}}}
}

func (o *oneConn) trace(ctx context.Context) context.Context {
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		addr := i.Conn.LocalAddr().String()
		o.same = i.Reused && addr == o.last
		o.last = addr
	}})
}

// Every route keeps the client's HTTP/1.1 connection: each request below
// goes out on the connection of the one before, also after an error
// answer and after a Range request (WIRE §1; issue 11).
func TestKeepAliveOnEveryRoute(t *testing.T) {
	e := envdtest.Start(t, "--flavor", "e2b")
	const token = "tok-keepalive"
	if code := postInit(t, e, `{"accessToken":"`+token+`"}`, ""); code != http.StatusNoContent {
		t.Fatalf("/init: %d", code)
	}
	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := os.WriteFile(filepath.Join(root, fmt.Sprintf("e%d", i)), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write([]byte("gzipped upload"))
	_ = zw.Close()
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	fw, _ := mw.CreateFormFile("file", filepath.Join(root, "mp.txt"))
	_, _ = fw.Write([]byte("multipart body"))
	_ = mw.Close()

	o := newOneConn()
	type call struct {
		name, method, path string
		hdr                map[string]string
		body               func() io.Reader
		status             int
		check              func(t *testing.T, body []byte)
	}
	tok := map[string]string{"X-Access-Token": token}
	with := func(kv ...string) map[string]string {
		m := map[string]string{"X-Access-Token": token}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	file := filepath.Join(root, "up.bin")
	calls := []call{
		{name: "health", method: "GET", path: "/health", status: http.StatusNoContent},
		{name: "upload octet-stream", method: "POST", path: "/files?username=root&path=" + file,
			hdr: with("Content-Type", "application/octet-stream"), body: func() io.Reader { return bytes.NewReader(big) }, status: 200},
		{name: "upload chunked", method: "POST", path: "/files?username=root&path=" + file + ".c",
			hdr: with("Content-Type", "application/octet-stream"), body: func() io.Reader { return io.MultiReader(bytes.NewReader(big)) }, status: 200},
		{name: "download", method: "GET", path: "/files?username=root&path=" + file, hdr: tok, status: 200,
			check: func(t *testing.T, b []byte) {
				if !bytes.Equal(b, big) {
					t.Errorf("downloaded %d bytes", len(b))
				}
			}},
		// A GET with a body (bigger than the proxy's 64 KiB, so handed
		// over): the body must not be lost on the way, or the next request
		// on the connection would be read as its rest.
		{name: "download with a body", method: "GET", path: "/files?username=root&path=" + file, hdr: tok,
			body: func() io.Reader { return strings.NewReader("a body nobody reads") }, status: 200,
			check: func(t *testing.T, b []byte) {
				if !bytes.Equal(b, big) {
					t.Errorf("downloaded %d bytes", len(b))
				}
			}},
		{name: "range", method: "GET", path: "/files?username=root&path=" + file, hdr: with("Range", "bytes=16-31"), status: http.StatusPartialContent,
			check: func(t *testing.T, b []byte) {
				if string(b) != "0123456789abcdef" {
					t.Errorf("range: %q", b)
				}
			}},
		{name: "after range", method: "GET", path: "/files?username=root&path=" + file + ".c", hdr: tok, status: 200},
		{name: "range not satisfiable", method: "GET", path: "/files?username=root&path=" + file, hdr: with("Range", "bytes=99999999-"), status: http.StatusRequestedRangeNotSatisfiable},
		{name: "gzip download", method: "GET", path: "/files?username=root&path=" + file, hdr: with("Accept-Encoding", "gzip"), status: 200,
			check: func(t *testing.T, b []byte) {
				zr, err := gzip.NewReader(bytes.NewReader(b))
				if err != nil {
					t.Fatal(err)
				}
				got, _ := io.ReadAll(zr)
				if !bytes.Equal(got, big) {
					t.Errorf("gunzipped %d bytes", len(got))
				}
			}},
		{name: "gzip upload", method: "POST", path: "/files?username=root&path=" + filepath.Join(root, "gz.txt"),
			hdr: with("Content-Type", "application/octet-stream", "Content-Encoding", "gzip"), body: func() io.Reader { return bytes.NewReader(gz.Bytes()) }, status: 200},
		{name: "multipart", method: "POST", path: "/files?username=root", hdr: with("Content-Type", mw.FormDataContentType()),
			body: func() io.Reader { return bytes.NewReader(mp.Bytes()) }, status: 200},
		{name: "404", method: "GET", path: "/files?username=root&path=" + filepath.Join(root, "missing"), hdr: tok, status: 404},
		{name: "after 404", method: "GET", path: "/files?username=root&path=" + file + ".c", hdr: tok, status: 200},
		{name: "400 directory", method: "GET", path: "/files?username=root&path=" + root, hdr: tok, status: 400},
		{name: "400 content type", method: "POST", path: "/files?username=root&path=" + file, hdr: with("Content-Type", "text/plain"),
			body: func() io.Reader { return strings.NewReader("unread body") }, status: 400},
		{name: "401 token", method: "GET", path: "/files?username=root&path=" + file, hdr: map[string]string{"X-Access-Token": "wrong"}, status: 401},
		{name: "401 user", method: "GET", path: "/files?username=nosuchuser&path=" + file, hdr: tok, status: 401},
		{name: "compose", method: "POST", path: "/files/compose", hdr: with("Content-Type", "application/json"),
			body: func() io.Reader {
				return strings.NewReader(fmt.Sprintf(`{"source_paths":[%q,%q],"destination":%q,"username":"root"}`,
					filepath.Join(root, "gz.txt"), filepath.Join(root, "mp.txt"), filepath.Join(root, "composed.txt")))
			}, status: 200},
		{name: "compose 400", method: "POST", path: "/files/compose", hdr: with("Content-Type", "application/json"),
			body: func() io.Reader { return strings.NewReader(`{"source_paths":[]}`) }, status: 400},
		{name: "after compose", method: "GET", path: "/files?username=root&path=" + filepath.Join(root, "composed.txt"), hdr: tok, status: 200,
			check: func(t *testing.T, b []byte) {
				if string(b) != "gzipped uploadmultipart body" {
					t.Errorf("composed: %q", b)
				}
			}},
	}
	for i, c := range calls {
		var body io.Reader
		if c.body != nil {
			body = c.body()
		}
		req, _ := http.NewRequestWithContext(o.trace(context.Background()), c.method, e.URL+c.path, body)
		for k, v := range c.hdr {
			req.Header.Set(k, v)
		}
		res, err := o.client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != c.status {
			t.Fatalf("%s: status %d, want %d: %s", c.name, res.StatusCode, c.status, b)
		}
		if c.check != nil {
			c.check(t, b)
		}
		if i > 0 && !o.same {
			t.Errorf("%s: a new connection (the previous answer closed it: Connection %q)", c.name, res.Header.Get("Connection"))
		}
		if res.Close {
			t.Errorf("%s: answered Connection: close", c.name)
		}
	}

	// ListDir over HTTP/1.1 Connect (handed over) in both codecs, and a
	// unary call between them.
	for _, opts := range [][]connect.ClientOption{{connect.WithProtoJSON()}, nil} {
		cl := filesystemconnect.NewFilesystemClient(o.client, e.URL, opts...)
		for i := range 3 {
			ctx := o.trace(envdtest.Ctx(t, 30*time.Second))
			req := withUser(&fspb.ListDirRequest{Path: root}, "root")
			req.Header().Set("X-Access-Token", token)
			res, err := cl.ListDir(ctx, req)
			if err != nil {
				t.Fatalf("ListDir: %v", err)
			}
			if len(res.Msg.GetEntries()) < 10 {
				t.Errorf("ListDir: %d entries", len(res.Msg.GetEntries()))
			}
			if !o.same {
				t.Errorf("ListDir %d: a new connection", i)
			}
			sreq := withUser(&fspb.StatRequest{Path: filepath.Join(root, "missing")}, "root")
			sreq.Header().Set("X-Access-Token", token)
			if _, err := cl.Stat(o.trace(ctx), sreq); connect.CodeOf(err) != connect.CodeNotFound {
				t.Errorf("Stat of a missing path: %v", err)
			}
			if !o.same {
				t.Errorf("Stat after ListDir: a new connection")
			}
		}
	}
}

// With envd-fs stopped, an upload is answered (503 JSON after the handoff
// bound) and never written later, once envd-fs runs again (issue 12 §3);
// the same for a handed-off ListDir.
func TestStoppedPluginNeverWritesLater(t *testing.T) {
	e := envdtest.Start(t)
	target := filepath.Join(t.TempDir(), "f.txt")
	if err := os.WriteFile(target, []byte("original"), 0o644); err != nil {
		t.Fatal(err)
	}
	// envd-fs up and serving handoffs first.
	if res, err := http.Get(e.URL + "/files?username=root&path=" + target); err != nil || res.StatusCode != 200 {
		t.Fatalf("download before the stop: %v %v", res, err)
	} else {
		res.Body.Close()
	}
	fs := e.PluginPid("envd-fs")
	if err := syscall.Kill(fs, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	cont := func() { _ = syscall.Kill(fs, syscall.SIGCONT) }
	defer cont()
	client := &http.Client{Timeout: 60 * time.Second}
	answers := make(chan string, 2)
	go func() {
		res, err := client.Post(e.URL+"/files?username=root&path="+target, "application/octet-stream", strings.NewReader("written after a failure"))
		if err != nil {
			answers <- "upload: " + err.Error()
			return
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		answers <- fmt.Sprintf("upload: %d %s", res.StatusCode, b)
	}()
	go func() {
		req, _ := http.NewRequest(http.MethodPost, e.URL+"/filesystem.Filesystem/ListDir", strings.NewReader(`{"path":"/"}`))
		req.Header.Set("Content-Type", "application/json")
		res, err := client.Do(req)
		if err != nil {
			answers <- "listdir: " + err.Error()
			return
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		answers <- fmt.Sprintf("listdir: %d %s", res.StatusCode, b)
	}()
	for range 2 {
		a := <-answers
		var body struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		_, rest, _ := strings.Cut(a, " 503 ")
		if !strings.Contains(a, " 503 ") || json.Unmarshal([]byte(rest), &body) != nil || body.Code != 503 || !strings.Contains(body.Message, "envd-fs") {
			t.Errorf("answer while envd-fs is stopped: %s", a)
		}
	}
	cont()
	// envd-fs now reads the handoffs it was sent; it must drop them. Once
	// it serves a new request it has seen the old ones.
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := client.Get(e.URL + "/files?username=root&path=" + target)
		if err == nil {
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode == 200 {
				if string(b) != "original" {
					t.Fatalf("file after SIGCONT: %q", b)
				}
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("envd-fs does not serve after SIGCONT: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if b, _ := os.ReadFile(target); string(b) != "original" {
		t.Fatalf("file written after the client was told it failed: %q", b)
	}
}

// A small upload goes through envd-init's proxy with its own Expect:
// 100-continue to envd-fs: the client sees none of that. It gets the same
// headers a handed-over upload gets (CORS included), no 100 Continue it did
// not ask for, and exactly one when it asked.
func TestSmallUploadLooksHandedOver(t *testing.T) {
	e := envdtest.Start(t)
	dir := t.TempDir()
	addr := strings.TrimPrefix(e.URL, "http://")
	upload := func(name string, expect bool) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		body := "small upload"
		head := fmt.Sprintf("POST /files?username=root&path=%s HTTP/1.1\r\nHost: x\r\nOrigin: http://client.example\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n",
			filepath.Join(dir, name), len(body))
		if expect {
			head += "Expect: 100-continue\r\n"
		}
		if _, err := io.WriteString(c, head+"\r\n"); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		if expect {
			line, err := br.ReadString('\n')
			if err != nil || !strings.Contains(line, " 100 ") {
				t.Fatalf("answer to Expect: %q %v", line, err)
			}
			if blank, _ := br.ReadString('\n'); blank != "\r\n" {
				t.Fatalf("100 Continue with headers: %q", blank)
			}
		}
		if _, err := io.WriteString(c, body); err != nil {
			t.Fatal(err)
		}
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || res.Header.Get("Access-Control-Allow-Origin") != "*" || res.Header.Get("Vary") != "Origin" {
			t.Errorf("upload (expect=%v): %d %v", expect, res.StatusCode, res.Header)
		}
		if b, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(b) != body {
			t.Errorf("uploaded file: %q %v", b, err)
		}
	}
	upload("a", false)
	upload("b", true)
}
