package handoff

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
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

// Running out of file descriptors for a moment must not end the receiver:
// once fds are free again, a handoff queued meanwhile is taken.
func TestListenerSurvivesRunningOutOfFds(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "h.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	client, err := net.Dial("tcp", front.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	served, err := front.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer served.Close()

	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	open, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = uint64(len(open) + 16)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Skipf("cannot lower RLIMIT_NOFILE: %v", err)
	}
	var hoard []*os.File
	release := func() {
		for _, f := range hoard {
			f.Close()
		}
		hoard = nil
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	defer release()
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			break
		}
		hoard = append(hoard, f)
	}
	// One fd for our end of the handoff socket; the receiver's accept
	// then finds none.
	hoard[len(hoard)-1].Close()
	hoard = hoard[:len(hoard)-1]
	sender, err := Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	time.Sleep(50 * time.Millisecond) // the receiver hits EMFILE meanwhile
	release()

	msg, err := Encode(http.Header{}, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			t.Errorf("accept: %v", err)
			close(got)
			return
		}
		got <- c
	}()
	if err := sender.Send(served.(*net.TCPConn), msg); err != nil {
		t.Fatalf("handoff after fds were freed: %v", err)
	}
	select {
	case c := <-got:
		if c != nil {
			c.Close()
		}
	case <-time.After(5 * time.Second):
		t.Fatal("handed-off connection never accepted")
	}
}
