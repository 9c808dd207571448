package handoff

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A client connection handed over mid-request is served by the receiver:
// the bytes read before the handoff are replayed, the extra headers are
// added and the connection closes after the response.
func TestHandOverAConnection(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "h.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srv := &http.Server{ConnContext: ConnContext, Handler: Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, r.Method+" "+r.URL.Path+" "+string(body))
	}))}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	// The "front door": reads the head, then hands the connection over.
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	go func() {
		c, err := front.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		buffered, _ := br.Peek(br.Buffered())
		req.RequestURI = req.URL.RequestURI()
		msg, err := Encode(http.Header{"Access-Control-Allow-Origin": {"*"}}, append(RequestHead(req), buffered...))
		if err != nil {
			t.Error(err)
			return
		}
		s, err := Dial(context.Background(), sock)
		if err != nil {
			t.Error(err)
			return
		}
		defer s.Close()
		if err := s.Send(c.(*net.TCPConn), msg); err != nil {
			t.Error(err)
		}
	}()
	client := &http.Client{Timeout: 5 * time.Second}
	res, err := client.Post("http://"+front.Addr().String()+"/files?x=1", "text/plain", strings.NewReader("payload"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if string(body) != "POST /files payload" || res.Header.Get("Access-Control-Allow-Origin") != "*" || !res.Close {
		t.Fatalf("got %q %v close=%v", body, res.Header, res.Close)
	}
}

func TestDecodeRejectsGarbage(t *testing.T) {
	for _, msg := range [][]byte{nil, {0xff}, {0x05, 'a'}} {
		if _, _, err := Decode(msg); err == nil {
			t.Errorf("Decode(%q) accepted", msg)
		}
	}
	extra, rest, err := Decode(mustEncode(t, http.Header{"X-A": {"1"}}, []byte("GET / HTTP/1.1\r\n\r\n")))
	if err != nil || extra.Get("X-A") != "1" || string(rest) != "GET / HTTP/1.1\r\n\r\n" {
		t.Fatalf("round trip: %v %q %v", extra, rest, err)
	}
}

func mustEncode(t *testing.T, h http.Header, req []byte) []byte {
	t.Helper()
	msg, err := Encode(h, req)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte{0})
	f.Add([]byte("\x0bX-A: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		_, _, _ = Decode(msg)
	})
}
