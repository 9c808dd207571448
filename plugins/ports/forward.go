package ports

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
)

var (
	loopback4 = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	loopback6 = netip.IPv6Loopback()
)

// forward serves one port: it accepts on each external address and relays
// every connection to the loopback listener of the same port, inside this
// process (no socat, no process per port). The manager owns the set of
// forwards; a forward owns its listeners, relays and their goroutines.
type forward struct {
	port   uint16
	log    *zap.Logger
	ctx    context.Context // canceled by close: aborts dials to the target
	cancel context.CancelFunc
	wg     sync.WaitGroup // accept loops and relays

	mu       sync.Mutex
	has4     bool // a listener on 127.0.0.1:port exists
	has6     bool // a listener on [::1]:port exists
	inodes   []uint64
	lns      map[netip.Addr]*net.TCPListener
	failures map[netip.Addr]string // last listen error per address, to log each new one once
	relays   map[*relay]struct{}
	closed   bool
}

// relay is one forwarded connection: client accepted on ext, target dialed on loopback.
type relay struct {
	ext    netip.Addr
	client *net.TCPConn
	target *net.TCPConn // nil while dialing
}

func newForward(log *zap.Logger, port uint16) *forward {
	ctx, cancel := context.WithCancel(context.Background())
	return &forward{
		port:     port,
		log:      log.With(zap.Uint16("port", port)),
		ctx:      ctx,
		cancel:   cancel,
		lns:      make(map[netip.Addr]*net.TCPListener),
		failures: make(map[netip.Addr]string),
		relays:   make(map[*relay]struct{}),
	}
}

// setTargets records which loopback families listen on the port now.
func (f *forward) setTargets(has4, has6 bool, inodes []uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.has4, f.has6 = has4, has6
	f.inodes = append(f.inodes[:0], inodes...)
}

// target picks the loopback address for a connection that arrived on ext:
// the same family when that loopback listener exists, else the other one.
func (f *forward) target(ext netip.Addr) (netip.AddrPort, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case ext.Is6() && f.has6, !f.has4 && f.has6:
		return netip.AddrPortFrom(loopback6, f.port), true
	case f.has4:
		return netip.AddrPortFrom(loopback4, f.port), true
	}
	return netip.AddrPort{}, false
}

// ensure makes the forward accept on exactly addrs: it opens what is missing
// and closes listeners (and their connections) on addresses no longer wanted.
// It reports whether every address is listening; a failed address (not on
// this host yet, port taken) is retried by the next call, and each distinct
// error is logged once at warn level, then at debug level, so a retry every
// interval does not flood the log.
func (f *forward) ensure(addrs []netip.Addr) (complete bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return true
	}
	for a, ln := range f.lns {
		if !slices.Contains(addrs, a) {
			ln.Close()
			delete(f.lns, a)
			f.closeRelaysLocked(a)
			f.log.Info("port forward stopped", zap.Stringer("addr", a))
		}
	}
	for a := range f.failures {
		if !slices.Contains(addrs, a) {
			delete(f.failures, a)
		}
	}
	complete = true
	for _, a := range addrs {
		if _, ok := f.lns[a]; ok {
			continue
		}
		ln, err := listenTCP(a, f.port)
		if err != nil {
			complete = false
			msg := err.Error()
			if f.failures[a] != msg {
				f.log.Warn("port forward: cannot listen, will retry next scan", zap.Stringer("addr", a), zap.Error(err))
			} else {
				f.log.Debug("port forward: still cannot listen", zap.Stringer("addr", a), zap.Error(err))
			}
			f.failures[a] = msg
			continue
		}
		delete(f.failures, a)
		f.lns[a] = ln
		f.wg.Add(1)
		go f.acceptLoop(ln, a)
		f.log.Info("port forward started", zap.Stringer("addr", a), zap.Bool("loopback4", f.has4), zap.Bool("loopback6", f.has6))
	}
	return complete
}

func listenTCP(a netip.Addr, port uint16) (*net.TCPListener, error) {
	network := "tcp4"
	if a.Is6() {
		network = "tcp6"
	}
	ln, err := net.ListenTCP(network, net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, port)))
	if err != nil {
		return nil, fmt.Errorf("listen for forward: %w", err)
	}
	return ln, nil
}

// close stops the forward: listeners, relays, dials; it returns once every
// goroutine of the forward has exited.
func (f *forward) close() {
	f.mu.Lock()
	if !f.closed {
		f.closed = true
		f.cancel()
		for a, ln := range f.lns {
			ln.Close()
			delete(f.lns, a)
		}
		for r := range f.relays {
			r.closeLocked()
		}
		clear(f.relays)
		f.log.Info("port forward removed")
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// closeRelaysLocked ends the connections accepted on ext.
func (f *forward) closeRelaysLocked(ext netip.Addr) {
	for r := range f.relays {
		if r.ext == ext {
			r.closeLocked()
			delete(f.relays, r)
		}
	}
}

func (r *relay) closeLocked() {
	r.client.Close()
	if r.target != nil {
		r.target.Close()
	}
}

func (f *forward) acceptLoop(ln *net.TCPListener, ext netip.Addr) {
	defer f.wg.Done()
	var backoff time.Duration
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Accept fails transiently when the process is out of fds or
			// buffers; wait a little instead of spinning, like net/http.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			f.log.Warn("port forward: accept failed", zap.Stringer("addr", ext), zap.Error(err), zap.Duration("retry_in", backoff))
			select {
			case <-f.ctx.Done():
				return
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		r := &relay{ext: ext, client: c}
		f.mu.Lock()
		if f.closed || f.lns[ext] != ln {
			f.mu.Unlock()
			c.Close()
			continue
		}
		f.relays[r] = struct{}{}
		f.wg.Add(1)
		f.mu.Unlock()
		go f.serve(r)
	}
}

// serve dials the loopback listener and copies both ways until both sides
// have finished. Each direction is dst.ReadFrom(src) between two
// *net.TCPConn, which Go implements with splice(2): the bytes never enter
// user space. EOF on one side is passed on with CloseWrite, so half-closed
// protocols keep working; an error on either side ends both.
func (f *forward) serve(r *relay) {
	defer f.wg.Done()
	defer f.drop(r)

	to, ok := f.target(r.ext)
	if !ok {
		refuse(r.client)
		return
	}
	var d net.Dialer
	conn, err := d.DialContext(f.ctx, "tcp", to.String())
	if err != nil {
		f.log.Debug("port forward: dial loopback failed", zap.Stringer("target", to), zap.Error(err))
		refuse(r.client)
		return
	}
	target := conn.(*net.TCPConn)
	f.mu.Lock()
	if _, live := f.relays[r]; !live {
		f.mu.Unlock()
		target.Close()
		return
	}
	r.target = target
	f.mu.Unlock()

	done := make(chan error, 1)
	f.wg.Add(1)
	// An error either way (a reset, not an EOF) breaks the connection:
	// close both sockets so the other direction ends too, and the server
	// learns the client is gone.
	go func() {
		defer f.wg.Done()
		err := copyHalf(target, r.client)
		if err != nil {
			r.client.Close()
			target.Close()
		}
		done <- err
	}()
	err = copyHalf(r.client, target)
	if err != nil {
		r.client.Close()
		target.Close()
	}
	if err2 := <-done; err2 != nil && err == nil {
		err = err2
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		f.log.Debug("port forward: connection ended with error", zap.Error(err))
	}
}

// copyHalf copies src to dst until EOF and then half-closes dst.
func copyHalf(dst, src *net.TCPConn) error {
	if _, err := dst.ReadFrom(src); err != nil {
		return err
	}
	return dst.CloseWrite()
}

// refuse resets the client connection, the closest thing to "connection
// refused" once the handshake is done.
func refuse(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

// drop forgets r and closes both of its connections.
func (f *forward) drop(r *relay) {
	f.mu.Lock()
	delete(f.relays, r)
	f.mu.Unlock()
	r.client.Close()
	if r.target != nil {
		r.target.Close()
	}
}

// snapshot describes the forward for Manager.Snapshot.
func (f *forward) snapshot() Forward {
	f.mu.Lock()
	defer f.mu.Unlock()
	fw := Forward{Port: f.port, Conns: len(f.relays), Inodes: append([]uint64(nil), f.inodes...)}
	if f.has4 {
		fw.Targets = append(fw.Targets, netip.AddrPortFrom(loopback4, f.port))
	}
	if f.has6 {
		fw.Targets = append(fw.Targets, netip.AddrPortFrom(loopback6, f.port))
	}
	for a := range f.lns {
		fw.Listening = append(fw.Listening, netip.AddrPortFrom(a, f.port))
	}
	for a, msg := range f.failures {
		fw.Failed = append(fw.Failed, FailedListen{Addr: netip.AddrPortFrom(a, f.port), Err: msg})
	}
	slices.SortFunc(fw.Listening, netip.AddrPort.Compare)
	slices.SortFunc(fw.Failed, func(a, b FailedListen) int { return a.Addr.Compare(b.Addr) })
	return fw
}
