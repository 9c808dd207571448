package handoff

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// receiver serves handed-off connections like envd-fs: echo the method,
// path and body, with the extra headers added.
func receiver(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "h.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ConnContext: ConnContext, ConnState: ConnState, Handler: Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.URL.Query().Has("unread") {
			body = nil // leave the body to net/http
		}
		fmt.Fprintf(w, "%s %s %d:%s", r.Method, r.URL.Path, len(body), body[:min(len(body), 16)])
	}))}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); ln.Close() })
	return sock
}

// prefixed reads prefix, then r.
type prefixed struct {
	prefix []byte
	r      io.Reader
}

func (p *prefixed) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.r.Read(b)
}

// front is a miniature envd-init: it reads each request's head, hands the
// connection over, and reads the next request once it is given back.
func front(t *testing.T, sock string) (addr string, handoffs chan int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	handoffs = make(chan int, 100)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var leftover []byte
				for n := 1; ; n++ {
					br := bufio.NewReader(&prefixed{prefix: leftover, r: c})
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					buffered, _ := br.Peek(br.Buffered())
					head := RequestHead(req)
					msg, err := Encode(http.Header{"Access-Control-Allow-Origin": {"*"}}, FramingOf(req, len(head)), append(head, buffered...))
					if err != nil {
						t.Error(err)
						return
					}
					s, err := Dial(context.Background(), sock)
					if err != nil {
						t.Error(err)
						return
					}
					if err := s.Send(c.(*net.TCPConn), msg); err != nil {
						t.Error(err)
						s.Close()
						return
					}
					var keep bool
					leftover, keep = s.Wait()
					s.Close()
					handoffs <- n
					if !keep {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), handoffs
}

// Every request on one client connection is handed over, served, and the
// connection comes back for the next: counted bodies, chunked bodies, no
// body, a body the handler left unread.
func TestConnectionComesBackAfterEachRequest(t *testing.T) {
	addr, handoffs := front(t, receiver(t))
	big := make([]byte, 3<<20)
	_, _ = rand.Read(big)
	reused := 0
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		if i.Reused {
			reused++
		}
	}}
	client := &http.Client{Timeout: 10 * time.Second}
	type call struct {
		method, path string
		body         io.Reader
		want         string
	}
	calls := []call{
		{"POST", "/a", strings.NewReader("payload"), "POST /a 7:payload"},
		{"GET", "/b", nil, "GET /b 0:"},
		// An io.Reader of unknown length goes chunked.
		{"POST", "/c", io.MultiReader(bytes.NewReader(big)), fmt.Sprintf("POST /c %d:%s", len(big), big[:16])},
		{"POST", "/d", bytes.NewReader(big), fmt.Sprintf("POST /d %d:%s", len(big), big[:16])},
		{"POST", "/e?unread", strings.NewReader("left for net/http"), "POST /e 0:"},
		{"GET", "/f", nil, "GET /f 0:"},
	}
	for _, c := range calls {
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), c.method, "http://"+addr+c.path, c.body)
		res, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", c.method, c.path, err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if string(body) != c.want || res.Header.Get("Access-Control-Allow-Origin") != "*" || res.Close {
			t.Fatalf("%s %s: got %q close=%v %v", c.method, c.path, body, res.Close, res.Header)
		}
	}
	if reused != len(calls)-1 {
		t.Fatalf("connection reused %d times over %d calls", reused, len(calls))
	}
	if n := <-handoffs; n != 1 {
		t.Fatalf("first handoff numbered %d", n)
	}
}

// Requests sent back to back before any answer (pipelining): each is
// handed over alone, the bytes of the next go back with the connection.
func TestPipelinedRequestsGoBackWithTheConnection(t *testing.T) {
	addr, _ := front(t, receiver(t))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	reqs := "POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc" +
		"POST /two HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nwxyz\r\n2\r\n12\r\n0\r\nTrailer-A: b\r\n\r\n" +
		"GET /three HTTP/1.1\r\nHost: x\r\n\r\n" +
		"GET /four HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(c, reqs); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for _, want := range []string{"POST /one 3:abc", "POST /two 6:wxyz12", "GET /three 0:", "GET /four 0:"} {
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("waiting for %q: %v", want, err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if string(body) != want {
			t.Fatalf("got %q, want %q", body, want)
		}
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("connection not closed after Connection: close: %v", err)
	}
}

// A handoff the sender gave up on is never served, even when the receiver
// gets to it later (it was stopped): the sender's answer is the only one.
func TestRevokedHandoffNeverRuns(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "h.sock")
	raw, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	client, err := net.Dial("tcp", tl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	served, err := tl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer served.Close()

	s, err := Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	head := []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	// The receiver is not accepting (stopped): the send times out.
	done := make(chan error, 1)
	go func() { done <- s.Send(served.(*net.TCPConn), mustEncode(t, nil, Framing{Head: len(head)}, head)) }()
	var err2 error
	select {
	case err2 = <-done:
	case <-time.After(AckTimeout + 10*time.Second):
		t.Fatal("Send never gave up")
	}
	if err2 == nil {
		t.Fatal("Send succeeded without a receiver")
	}
	s.Close()
	// The receiver wakes up now and takes the message: it must not serve it.
	l := &Listener{ln: raw, conns: make(chan net.Conn, 1), done: make(chan struct{})}
	c, err := raw.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	l.receive(c)
	select {
	case conn := <-l.conns:
		conn.Close()
		t.Fatal("a revoked handoff was delivered")
	default:
	}
}

// A proxied download carrying the offer is answered when small and
// declined when big or of unknown length; without the offer, or for other
// methods, the handler answers as always.
func TestOfferDeclinesBigDownloads(t *testing.T) {
	small := bytes.Repeat([]byte("s"), OfferLimit)
	big := bytes.Repeat([]byte("b"), OfferLimit+1)
	h := Offer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(OfferHeader) != "" {
			t.Error("the offer header reached the handler")
		}
		switch r.URL.Path {
		case "/small":
			http.ServeContent(w, r, "s", time.Time{}, bytes.NewReader(small))
		case "/big":
			http.ServeContent(w, r, "b", time.Time{}, bytes.NewReader(big))
		case "/stream":
			_, _ = w.Write([]byte("no length"))
			w.(http.Flusher).Flush()
		case "/missing":
			http.Error(w, "nope", http.StatusNotFound)
		}
	}))
	srv := httptestServer(t, h)
	for _, c := range []struct {
		method, path string
		offer        bool
		declined     bool
		status       int
	}{
		{"GET", "/small", true, false, 200},
		{"GET", "/big", true, true, OfferStatus},
		{"GET", "/stream", true, true, OfferStatus},
		{"GET", "/missing", true, false, 404},
		{"GET", "/big", false, false, 200},
		{"POST", "/big", true, false, 200},
	} {
		req, _ := http.NewRequest(c.method, srv+c.path, nil)
		req.Header.Set("Range", "bytes=0-")
		if c.offer {
			req.Header.Set(OfferHeader, "1")
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		status := res.StatusCode
		if status == http.StatusPartialContent {
			status = 200
		}
		if Declined(res) != c.declined || status != c.status || (c.declined && len(body) != 0) {
			t.Errorf("%s %s offer=%v: %d declined=%v %d bytes", c.method, c.path, c.offer, res.StatusCode, Declined(res), len(body))
		}
	}
}

func httptestServer(t *testing.T, h http.Handler) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

// A small upload offered through the proxy reaches the handler only once
// its body is whole (envd-init sends it after the plugin's 100 Continue,
// and never once it has answered the client itself): a body cut short is
// dropped without an answer and the handler never runs.
func TestOfferedUploadActsOnlyOnAWholeBody(t *testing.T) {
	got := make(chan string, 4)
	srv := httptestServer(t, Offer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- string(b)
		_, _ = io.WriteString(w, "stored")
	})))
	addr := strings.TrimPrefix(srv, "http://")
	send := func(declared int, body string) (string, error) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "POST /files HTTP/1.1\r\nHost: x\r\n%s: 1\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n", OfferHeader, declared)
		br := bufio.NewReader(c)
		line, err := br.ReadString('\n')
		if err != nil {
			return "", err
		}
		if !strings.Contains(line, " 100 ") {
			t.Fatalf("first answer %q, want a 100 Continue before the body", line)
		}
		if _, err := br.ReadString('\n'); err != nil { // the 100's blank line
			return "", err
		}
		_, _ = io.WriteString(c, body)
		if len(body) < declared {
			_ = c.(*net.TCPConn).CloseWrite()
		}
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			return "", err
		}
		b, _ := io.ReadAll(res.Body)
		return fmt.Sprintf("%d %s", res.StatusCode, b), nil
	}
	if a, err := send(5, "hello"); err != nil || a != "200 stored" {
		t.Fatalf("whole body: %q %v", a, err)
	}
	if b := <-got; b != "hello" {
		t.Fatalf("handler got %q", b)
	}
	if a, err := send(10, "hel"); err == nil {
		t.Fatalf("a body cut short was answered: %q", a)
	}
	select {
	case b := <-got:
		t.Fatalf("the handler ran on a body cut short: %q", b)
	case <-time.After(200 * time.Millisecond):
	}
}

// An offered POST is answered whatever its size unless its handler
// declines it (DeclineOffer) before answering; a request that was not
// offered cannot be declined and gets the handler's own answer.
func TestOfferedCallDeclinedByItsHandler(t *testing.T) {
	big := bytes.Repeat([]byte("b"), OfferLimit+1)
	srv := httptestServer(t, Offer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if Offered(r.Context()) != (r.Header.Get("X-Offered") != "") {
			t.Error("Offered is wrong")
		}
		if string(body) == "decline" && DeclineOffer(r.Context()) {
			http.Error(w, "this answer is replaced", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write(big)
	})))
	for _, c := range []struct {
		body     string
		offer    bool
		declined bool
		status   int
		size     int
	}{
		{"decline", true, true, OfferStatus, 0},
		{"answer", true, false, 200, len(big)},
		{"decline", false, false, 200, len(big)},
	} {
		req, _ := http.NewRequest(http.MethodPost, srv+"/call", strings.NewReader(c.body))
		if c.offer {
			req.Header.Set(OfferHeader, "1")
			req.Header.Set("X-Offered", "1")
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if Declined(res) != c.declined || res.StatusCode != c.status || len(body) != c.size {
			t.Errorf("%q offer=%v: %d declined=%v %d bytes", c.body, c.offer, res.StatusCode, Declined(res), len(body))
		}
	}
}
