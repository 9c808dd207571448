package ports

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"go.uber.org/zap"
)

// A client that resets its connection mid-request must not leave the
// relay (and the server's connection) open: the server is told, whatever
// it was waiting for.
func TestForwardClientResetReachesTheServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	f := newTestForward(t, port, true, false)
	c := dialLocal(t, hostPort(ext127, port))
	if _, err := c.Write([]byte("partial")); err != nil {
		t.Fatal(err)
	}
	var srv net.Conn
	select {
	case srv = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("server never saw the relayed connection")
	}
	defer srv.Close()
	buf := make([]byte, 7)
	if _, err := io.ReadFull(srv, buf); err != nil {
		t.Fatal(err)
	}
	_ = c.SetLinger(0)
	c.Close() // RST
	_ = srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := srv.Read(buf); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the server was never told the client went away")
	}
	deadline := time.Now().Add(5 * time.Second)
	for f.snapshot().Conns != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("relay still open: %+v", f.snapshot())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// An IPv6-only [::] listener next to a 127.0.0.1 one leaves IPv4 to the
// forward (only on IPv4 external addresses); a [::] listener alone is
// dual-stack and needs none.
func TestReconcileIPv6OnlyWildcard(t *testing.T) {
	probe, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("no 127.0.0.2: %v", err)
	}
	port := uint16(probe.Addr().(*net.TCPAddr).Port)
	probe.Close()
	v6ext := netip.MustParseAddr("fd00:e4d::1") // not on this host: listening there fails
	m := New(zap.NewNop(), Options{ExternalAddrs: []netip.Addr{ext127, v6ext}})
	defer m.closeAll()
	reconcile := func(socks ...Socket) map[uint16]Forward {
		listeners := map[Key]Socket{}
		for _, s := range socks {
			listeners[s.Key()] = s
		}
		m.mu.Lock()
		m.reconcileLocked(listeners)
		out := map[uint16]Forward{}
		for p, f := range m.forwards {
			out[p] = f.snapshot()
		}
		m.mu.Unlock()
		return out
	}
	any6 := Socket{Addr: netip.IPv6Unspecified(), Port: port, Inode: 1}
	lo4 := Socket{Addr: loopback4, Port: port, Inode: 2}

	if fw := reconcile(any6); len(fw) != 0 {
		t.Fatalf("dual-stack [::] alone was forwarded: %+v", fw)
	}
	fw, ok := reconcile(any6, lo4)[port]
	if !ok {
		t.Fatal("127.0.0.1 next to an IPv6-only [::] was not forwarded")
	}
	if len(fw.Listening) != 1 || fw.Listening[0].Addr() != ext127 {
		t.Fatalf("forward listens on %v, want only %v", fw.Listening, ext127)
	}
	for _, fl := range fw.Failed {
		if fl.Addr.Addr() == v6ext {
			t.Fatalf("forward tried the IPv6 address the [::] listener covers: %+v", fl)
		}
	}
	if fw := reconcile(Socket{Addr: netip.IPv4Unspecified(), Port: port, Inode: 3}, lo4); len(fw) != 0 {
		t.Fatalf("port with a 0.0.0.0 listener was forwarded: %+v", fw)
	}
}
