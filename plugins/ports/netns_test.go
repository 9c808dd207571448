package ports

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const testInterval = 20 * time.Millisecond

// waitFor polls cond every few milliseconds for at most timeout.
func waitFor(tb testing.TB, what string, timeout time.Duration, cond func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// echo sends size random bytes through an 'e' connection while reading the
// echo, half-closes, and checks that exactly the same bytes came back
// followed by EOF: data both ways and half-close through the relay.
func echo(c *net.TCPConn, size int) error {
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	data := make([]byte, size)
	rand.Read(data)
	errc := make(chan error, 1)
	go func() {
		if _, err := c.Write(append([]byte{'e'}, data...)); err != nil {
			errc <- err
			return
		}
		errc <- c.CloseWrite()
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if werr := <-errc; werr != nil {
		return fmt.Errorf("write: %w", werr)
	}
	if err != nil {
		return fmt.Errorf("read after %d bytes: %w", n, err)
	}
	if n != int64(size) || !bytes.Equal(h.Sum(nil), sha256Of(data)) {
		return fmt.Errorf("echo: got %d bytes (checksum %x), sent %d (checksum %x)", n, h.Sum(nil), size, sha256Of(data))
	}
	return nil
}

func sha256Of(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// reach dials addr from the host namespace and echoes a few bytes.
func (n *netns) reach(addr string) error {
	c, err := n.dial(addr)
	if err != nil {
		return err
	}
	return echo(c, 16)
}

// refused reports nil once a connection to addr is refused.
func (n *netns) refused(addr string) error {
	c, err := n.dial(addr)
	if err == nil {
		c.Close()
		return errors.New("connection accepted")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return err
	}
	return nil
}

func hostPort(a netip.Addr, port uint16) string {
	return netip.AddrPortFrom(a, port).String()
}

func findForward(fws []Forward, port uint16) *Forward {
	for i := range fws {
		if fws[i].Port == port {
			return &fws[i]
		}
	}
	return nil
}

func TestForwardInNetns(t *testing.T) {
	n := newNetns(t)
	opts := Options{Interval: testInterval, ExternalAddrs: []netip.Addr{vmAddr4}}
	if n.ipv6 {
		opts.ExternalAddrs = append(opts.ExternalAddrs, vmAddr6)
	}
	h := n.startHelper(t, opts)
	const wait = 10 * time.Second

	p4, _ := h.listen("127.0.0.1:0")
	ext4 := hostPort(vmAddr4, p4)
	waitFor(t, "IPv4 loopback port reachable on "+ext4, wait, func() error { return n.reach(ext4) })

	t.Run("DataBothWays", func(t *testing.T) {
		c, err := n.dial(ext4)
		if err != nil {
			t.Fatal(err)
		}
		if err := echo(c, 8<<20); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("Concurrent50", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 50)
		for i := range 50 {
			wg.Go(func() {
				c, err := n.dial(ext4)
				if err != nil {
					errs <- fmt.Errorf("conn %d: %w", i, err)
					return
				}
				if err := echo(c, 256<<10); err != nil {
					errs <- fmt.Errorf("conn %d: %w", i, err)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("WildcardNotForwarded", func(t *testing.T) {
		pw, _ := h.listen("0.0.0.0:0")
		pl, _ := h.listen("127.0.0.1:0")
		// pl appears in the same scan as pw or a later one.
		waitFor(t, "forward of a later loopback listener", wait, func() error {
			if findForward(h.forwards(), pl) == nil {
				return errors.New("no forward yet")
			}
			return nil
		})
		if f := findForward(h.forwards(), pw); f != nil {
			t.Fatalf("wildcard listener forwarded: %+v", f)
		}
		h.do("close %d", pw)
		h.do("close %d", pl)
	})

	t.Run("IPv6", func(t *testing.T) {
		if !n.ipv6 {
			t.Skip("no IPv6 in the test namespaces")
		}
		p6, _ := h.listen("[::1]:0")
		// A server on ::1 only is reachable on both external addresses.
		for _, a := range []string{hostPort(vmAddr4, p6), hostPort(vmAddr6, p6)} {
			waitFor(t, "[::1] port reachable on "+a, wait, func() error { return n.reach(a) })
			c, err := n.dial(a)
			if err != nil {
				t.Fatal(err)
			}
			if err := echo(c, 2<<20); err != nil {
				t.Fatalf("%s: %v", a, err)
			}
		}
		// The IPv4 server is reachable on the IPv6 external address too.
		if err := n.reach(hostPort(vmAddr6, p4)); err != nil {
			t.Fatal(err)
		}
		f := findForward(h.forwards(), p6)
		if f == nil || !slices.Equal(f.Targets, []netip.AddrPort{netip.AddrPortFrom(loopback6, p6)}) {
			t.Fatalf("forward of [::1]:%d: %+v", p6, f)
		}
		h.do("close %d", p6)
		waitFor(t, "IPv6 forward removed", wait, func() error { return n.refused(hostPort(vmAddr6, p6)) })

		// A server on both 127.0.0.1:p and [::1]:p: one forward, both targets.
		h.listen(fmt.Sprintf("[::1]:%d", p4))
		want := []netip.AddrPort{netip.AddrPortFrom(loopback4, p4), netip.AddrPortFrom(loopback6, p4)}
		waitFor(t, "dual-stack targets", wait, func() error {
			if f := findForward(h.forwards(), p4); f == nil || !slices.Equal(f.Targets, want) || len(f.Inodes) != 2 {
				return fmt.Errorf("forward %+v", f)
			}
			return nil
		})
		for _, a := range []string{ext4, hostPort(vmAddr6, p4)} {
			if err := n.reach(a); err != nil {
				t.Fatalf("%s: %v", a, err)
			}
		}
		h.do("close %d", p4) // the latest server on p4: the [::1] one
		waitFor(t, "back to the IPv4 target only", wait, func() error {
			if f := findForward(h.forwards(), p4); f == nil || len(f.Targets) != 1 || f.Targets[0].Addr() != loopback4 {
				return fmt.Errorf("forward %+v", f)
			}
			return nil
		})
		if err := n.reach(hostPort(vmAddr6, p4)); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("ServerRestartSamePort", func(t *testing.T) {
		f := findForward(h.forwards(), p4)
		if f == nil {
			t.Fatal("no forward")
		}
		old := f.Inodes
		h.do("close %d", p4)
		h.listen(fmt.Sprintf("127.0.0.1:%d", p4))
		waitFor(t, "forward follows the new listener", wait, func() error {
			if f := findForward(h.forwards(), p4); f == nil || len(f.Inodes) != 1 || slices.Equal(f.Inodes, old) {
				return fmt.Errorf("forward %+v (old inodes %v)", f, old)
			}
			return n.reach(ext4)
		})
	})

	t.Run("Reserved", func(t *testing.T) {
		o := opts
		o.Reserved = []uint16{p4}
		h.setOptions(o)
		waitFor(t, "reserved port no longer forwarded", wait, func() error { return n.refused(ext4) })
		pr, _ := h.listen("127.0.0.1:0")
		waitFor(t, "other port still forwarded", wait, func() error { return n.reach(hostPort(vmAddr4, pr)) })
		if f := findForward(h.forwards(), p4); f != nil {
			t.Fatalf("reserved port forwarded: %+v", f)
		}
		h.setOptions(opts)
		waitFor(t, "port forwarded again once unreserved", wait, func() error { return n.reach(ext4) })
		h.do("close %d", pr)
	})

	t.Run("MissingExternalAddress", func(t *testing.T) {
		extra := netip.MustParseAddr("169.254.0.99")
		o := opts
		o.ExternalAddrs = append(slices.Clone(opts.ExternalAddrs), extra)
		h.setOptions(o)
		waitFor(t, "listen failure on an address this host lacks", wait, func() error {
			f := findForward(h.forwards(), p4)
			if f == nil || len(f.Failed) != 1 || f.Failed[0].Addr.Addr() != extra {
				return fmt.Errorf("forward %+v", f)
			}
			if !strings.Contains(f.Failed[0].Err, "assign requested address") {
				return fmt.Errorf("unexpected error %q", f.Failed[0].Err)
			}
			return nil
		})
		// The other addresses keep working meanwhile.
		if err := n.reach(ext4); err != nil {
			t.Fatal(err)
		}
		if err := ipCmd("-n", n.vm, "addr", "add", "169.254.0.99/32", "dev", n.vmLink); err != nil {
			t.Fatal(err)
		}
		if err := ipCmd("-n", n.host, "route", "add", "169.254.0.99/32", "via", "169.254.0.21"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "forward on the address once it exists", wait, func() error { return n.reach(hostPort(extra, p4)) })
		h.setOptions(opts)
		waitFor(t, "forward gone from a removed address", wait, func() error { return n.refused(hostPort(extra, p4)) })
	})

	t.Run("PauseResume", func(t *testing.T) {
		// An open relayed connection must be closed by Pause.
		c, err := n.dial(ext4)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("ehello")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		h.do("pause")
		if fws := h.forwards(); len(fws) != 0 {
			t.Fatalf("forwards after Pause: %+v", fws)
		}
		if err := n.refused(ext4); err != nil {
			t.Fatalf("after Pause: %v", err)
		}
		c.SetReadDeadline(time.Now().Add(wait))
		if k, err := c.Read(buf); err == nil {
			t.Fatalf("relayed connection still open after Pause: read %q", buf[:k])
		} else if errors.Is(err, syscall.ETIMEDOUT) || errors.Is(err, errors.ErrUnsupported) || isTimeout(err) {
			t.Fatalf("relayed connection still open after Pause: %v", err)
		}
		h.do("resume")
		waitFor(t, "reachable after Resume", wait, func() error { return n.reach(ext4) })
	})

	t.Run("ServerStops", func(t *testing.T) {
		h.do("close %d", p4)
		waitFor(t, "forward removed after the server stopped", wait, func() error { return n.refused(ext4) })
		if f := findForward(h.forwards(), p4); f != nil {
			t.Fatalf("forward still listed: %+v", f)
		}
	})

	t.Run("StopLeaksNothing", func(t *testing.T) {
		// Run must end with a forward that is relaying a connection.
		ps, _ := h.listen("127.0.0.1:0")
		ext := hostPort(vmAddr4, ps)
		waitFor(t, "new port reachable", wait, func() error { return n.reach(ext) })
		c, err := n.dial(ext)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("ehello")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
			t.Fatal(err)
		}
		var base, after, fwds int
		if _, err := fmt.Sscan(h.do("stop"), &base, &after, &fwds); err != nil {
			t.Fatal(err)
		}
		if after > base || fwds != 0 {
			t.Fatalf("after Run returned: %d goroutines (before New: %d), %d forwards", after, base, fwds)
		}
		if err := n.refused(ext); err != nil {
			t.Fatalf("after Run returned: %v", err)
		}
		c.SetReadDeadline(time.Now().Add(wait))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Fatalf("relayed connection open after Run returned: %v", err)
		}
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
