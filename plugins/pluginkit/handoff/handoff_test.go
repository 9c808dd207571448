package handoff

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestDecodeRejectsGarbage(t *testing.T) {
	for _, msg := range [][]byte{nil, {0xff}, {0x05, 'a'}, {0x05, 0x00, 0x00, 'a'}, {0x00, 0x03, 0x00}} {
		if _, _, _, err := Decode(msg); err == nil {
			t.Errorf("Decode(%q) accepted", msg)
		}
	}
	req := []byte("GET / HTTP/1.1\r\n\r\n")
	extra, f, rest, err := Decode(mustEncode(t, http.Header{"X-A": {"1"}}, Framing{Head: len(req), Body: Chunked}, req))
	if err != nil || extra.Get("X-A") != "1" || string(rest) != string(req) || f != (Framing{len(req), Chunked}) {
		t.Fatalf("round trip: %v %v %q %v", extra, f, rest, err)
	}
}

func mustEncode(t *testing.T, h http.Header, f Framing, req []byte) []byte {
	t.Helper()
	msg, err := Encode(h, f, req)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte{0})
	f.Add([]byte("\x0bX-A: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		_, _, _, _ = Decode(msg)
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

	head := []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	msg, err := Encode(http.Header{}, Framing{Head: len(head)}, head)
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
