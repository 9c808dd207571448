package ports

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

// These tests need no namespace: the "external" address is 127.0.0.2 (any
// 127/8 address is local) and the server listens on 127.0.0.1, so the
// forwarder is exercised alone on loopback, without the scanner.

var ext127 = netip.MustParseAddr("127.0.0.2")

// echoServer serves the 'e' protocol of the test servers on 127.0.0.1.
func echoServer(t *testing.T) uint16 {
	t.Helper()
	s, err := startTestServer("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	return s.port
}

func dialLocal(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return c.(*net.TCPConn)
}

func newTestForward(t *testing.T, port uint16, has4, has6 bool) *forward {
	t.Helper()
	f := newForward(zap.NewNop(), port)
	t.Cleanup(f.close)
	f.setTargets(has4, has6, nil)
	if !f.ensure([]netip.Addr{ext127}) {
		t.Skipf("cannot listen on %v: %+v", ext127, f.snapshot().Failed)
	}
	return f
}

func TestForwardRelaysWithHalfClose(t *testing.T) {
	port := echoServer(t)
	newTestForward(t, port, true, false)
	if err := echo(dialLocal(t, hostPort(ext127, port)), 4<<20); err != nil {
		t.Fatal(err)
	}
}

func TestForwardTargetFallback(t *testing.T) {
	f := newForward(zap.NewNop(), 80)
	defer f.close()
	for _, tc := range []struct {
		has4, has6 bool
		ext        netip.Addr
		want       netip.Addr
	}{
		{true, false, vmAddr4, loopback4},
		{true, false, vmAddr6, loopback4},
		{false, true, vmAddr4, loopback6},
		{false, true, vmAddr6, loopback6},
		{true, true, vmAddr4, loopback4},
		{true, true, vmAddr6, loopback6},
	} {
		f.setTargets(tc.has4, tc.has6, nil)
		got, ok := f.target(tc.ext)
		if !ok || got.Addr() != tc.want || got.Port() != 80 {
			t.Errorf("has4=%v has6=%v ext=%v: got %v %v, want %v", tc.has4, tc.has6, tc.ext, got, ok, tc.want)
		}
	}
	f.setTargets(false, false, nil)
	if got, ok := f.target(vmAddr4); ok {
		t.Errorf("no listener: got target %v", got)
	}
}

// A connection accepted while the loopback listener is already gone (between
// two scans) is reset, not left hanging.
func TestForwardResetsWhenTargetGone(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	newTestForward(t, port, true, false)
	// On loopback the reset may even beat the end of connect().
	conn, err := net.DialTimeout("tcp", hostPort(ext127, port), 5*time.Second)
	if err == nil {
		defer conn.Close()
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Read(make([]byte, 1))
	}
	if err == nil || isTimeout(err) {
		t.Fatalf("read from a forward without target: %v", err)
	}
}

func TestForwardCloseEndsConnections(t *testing.T) {
	before := runtime.NumGoroutine()
	port := echoServer(t)
	f := newForward(zap.NewNop(), port)
	f.setTargets(true, false, nil)
	if !f.ensure([]netip.Addr{ext127}) {
		t.Skip("cannot listen on 127.0.0.2")
	}
	c := dialLocal(t, hostPort(ext127, port))
	defer c.Close()
	if _, err := c.Write([]byte("ehi")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}
	if n := f.snapshot().Conns; n != 1 {
		t.Fatalf("%d relayed connections, want 1", n)
	}
	f.close() // returns once every goroutine of the forward is gone
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("client connection open after close: %v", err)
	}
	if _, err := net.DialTimeout("tcp", hostPort(ext127, port), time.Second); err == nil {
		t.Fatal("external listener open after close")
	}
	waitFor(t, "test server goroutines gone", 5*time.Second, func() error {
		if n := runtime.NumGoroutine(); n > before+2 { // the echo server's accept loop and its one handler at most
			return errors.New("goroutines left")
		}
		return nil
	})
}

// An address this host lacks is reported and retried; dropping an address
// closes its listener and the connections accepted on it.
func TestForwardEnsureAddresses(t *testing.T) {
	port := echoServer(t)
	f := newTestForward(t, port, true, false)
	missing := netip.MustParseAddr("192.0.2.1") // TEST-NET-1, never local here
	if f.ensure([]netip.Addr{ext127, missing}) {
		t.Fatal("ensure reported complete with an address this host lacks")
	}
	fw := f.snapshot()
	if len(fw.Listening) != 1 || len(fw.Failed) != 1 || fw.Failed[0].Addr.Addr() != missing ||
		!strings.Contains(fw.Failed[0].Err, "assign requested address") {
		t.Fatalf("snapshot %+v", fw)
	}
	c := dialLocal(t, hostPort(ext127, port))
	defer c.Close()
	if _, err := c.Write([]byte("ehi")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}
	if f.ensure([]netip.Addr{missing}) {
		t.Fatal("ensure reported complete")
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("connection on a dropped address still open: %v", err)
	}
	if fw := f.snapshot(); len(fw.Listening) != 0 || fw.Conns != 0 {
		t.Fatalf("snapshot after dropping the address: %+v", fw)
	}
}

func TestOptionsNormalize(t *testing.T) {
	o := Options{
		ExternalAddrs: []netip.Addr{{}, netip.IPv4Unspecified(), loopback4, loopback6,
			netip.MustParseAddr("::ffff:10.0.0.1"), netip.MustParseAddr("10.0.0.1"), vmAddr6},
		Interval: time.Nanosecond,
	}.normalize(zap.NewNop())
	if want := []netip.Addr{netip.MustParseAddr("10.0.0.1"), vmAddr6}; !slices.Equal(o.ExternalAddrs, want) {
		t.Errorf("addresses %v, want %v", o.ExternalAddrs, want)
	}
	if o.Interval != minInterval {
		t.Errorf("interval %v, want %v", o.Interval, minInterval)
	}
	d := Options{}.normalize(zap.NewNop())
	if !slices.Equal(d.ExternalAddrs, []netip.Addr{DefaultExternalAddr}) || d.Interval != DefaultInterval {
		t.Errorf("defaults: %+v", d)
	}
}

func TestRunTwiceConcurrently(t *testing.T) {
	m := New(nil, Options{})
	m.Pause() // scan and forward nothing on this shared host
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	waitFor(t, "Run started", 5*time.Second, func() error {
		if !m.running.Load() {
			return errors.New("not running")
		}
		return nil
	})
	if err := m.Run(ctx); err == nil {
		t.Fatal("second concurrent Run returned nil")
	}
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}
