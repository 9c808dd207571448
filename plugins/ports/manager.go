// Package ports makes TCP services that listen only on loopback inside the VM
// reachable on the VM's external address (WIRE §9.6); it runs in envd-net. A
// Scanner reads /proc/net/tcp{,6} every interval and a Manager keeps one
// in-process forward per loopback-only port, relaying connections with
// splice(2).
package ports

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Defaults of Options.
var (
	DefaultExternalAddr = netip.AddrFrom4([4]byte{169, 254, 0, 21})
	DefaultInterval     = time.Second
)

// minInterval keeps a misconfigured interval from turning the scan into a busy loop.
const minInterval = time.Millisecond

// Options configure a Manager. The zero value means the defaults.
type Options struct {
	// ExternalAddrs are the addresses every forwarded port accepts on, each
	// with the port of the loopback listener. Default: 169.254.0.21. An IPv6
	// address may be added (say the VM's eth0 IPv6 address); a connection
	// arriving on it is relayed to [::1] when that listener exists, else to
	// 127.0.0.1, and a connection on an IPv4 address prefers 127.0.0.1. So a
	// server on [::1] only is still reachable on 169.254.0.21. Unspecified
	// (0.0.0.0, ::) and loopback (127.0.0.1, ::1) addresses are ignored: a
	// forward on them would look like a listener to forward itself.
	ExternalAddrs []netip.Addr
	// Reserved ports are never forwarded (envd's own listeners).
	Reserved []uint16
	// Interval between two scans. Default: 1 s. It bounds the time from a
	// listen() in the sandbox to the port being reachable from outside.
	Interval time.Duration
}

func (o Options) normalize(log *zap.Logger) Options {
	n := Options{Interval: o.Interval, Reserved: slices.Clone(o.Reserved)}
	if n.Interval <= 0 {
		n.Interval = DefaultInterval
	}
	n.Interval = max(n.Interval, minInterval)
	for _, a := range o.ExternalAddrs {
		a = a.Unmap()
		if !a.IsValid() || a.IsUnspecified() || a == loopback4 || a == loopback6 {
			log.Warn("port forward: ignoring unusable external address", zap.Stringer("addr", a))
			continue
		}
		if !slices.Contains(n.ExternalAddrs, a) {
			n.ExternalAddrs = append(n.ExternalAddrs, a)
		}
	}
	if len(n.ExternalAddrs) == 0 {
		n.ExternalAddrs = []netip.Addr{DefaultExternalAddr}
	}
	return n
}

// Forward describes one forwarded port (Manager.Snapshot).
type Forward struct {
	Port      uint16
	Targets   []netip.AddrPort // loopback listeners connections are relayed to
	Inodes    []uint64         // socket inodes of those listeners
	Listening []netip.AddrPort // external addresses accepting now
	Failed    []FailedListen   // external addresses that could not be listened on; retried every scan
	Conns     int              // relayed connections open now
}

// FailedListen is an external address a forward could not listen on.
type FailedListen struct {
	Addr netip.AddrPort
	Err  string
}

// Manager runs the scanner and the forwards. Its methods are safe for
// concurrent use; Run runs the scan loop, the others steer it.
type Manager struct {
	log     *zap.Logger
	wake    chan struct{}
	running atomic.Bool

	mu       sync.Mutex
	opts     Options
	paused   bool
	dirty    bool // options changed or resumed: reconcile even if no listener changed
	reset    bool // the scanner must forget its state (after Resume)
	forwards map[uint16]*forward
}

// New returns a Manager; nothing happens until Run.
func New(log *zap.Logger, opts Options) *Manager {
	if log == nil {
		log = zap.NewNop()
	}
	return &Manager{
		log:      log,
		wake:     make(chan struct{}, 1),
		opts:     opts.normalize(log),
		forwards: make(map[uint16]*forward),
	}
}

// Run scans and forwards until ctx is done, then closes every forward and
// returns nil once all of its goroutines have exited. Only one Run may be
// active at a time; a Manager can be run again after Run returns.
func (m *Manager) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("ports: Manager.Run is already running")
	}
	defer m.running.Store(false)
	defer m.closeAll()

	sc := NewScanner("")
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	var (
		pending bool   // some forward could not listen everywhere: retry on every scan
		lastErr string // last scan error, logged once
	)
	for {
		m.mu.Lock()
		paused, interval, reset := m.paused, m.opts.Interval, m.reset
		m.reset = false
		m.mu.Unlock()
		if reset {
			sc.Reset()
		}
		if paused {
			timer.Stop()
		} else {
			added, removed, err := sc.Scan()
			switch {
			case err != nil:
				// Keep the forwards as they are: a failed read says nothing
				// about the listeners.
				if err.Error() != lastErr {
					m.log.Warn("port scan failed", zap.Error(err))
					lastErr = err.Error()
				}
			default:
				lastErr = ""
				m.mu.Lock()
				if !m.paused && (len(added) > 0 || len(removed) > 0 || m.dirty || pending) {
					m.dirty = false
					pending = !m.reconcileLocked(sc.Listeners())
				}
				m.mu.Unlock()
			}
			timer.Reset(interval)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.wake:
		case <-timer.C:
		}
	}
}

// reconcileLocked makes the forwards match the listeners: one forward per
// port that has a listener on 127.0.0.1, ::1 or ::ffff:127.0.0.1, unless the
// port is reserved or also has a wildcard listener (already reachable). It
// reports whether every forward listens on every external address.
//
// /proc does not say whether a [::] listener is dual-stack. Alone on its
// port it is taken to be (the Linux default), so the port is reachable.
// Next to a 127.0.0.1 listener it must be IPv6-only (a dual-stack one could
// not share the port), so IPv4 still needs the forward, and only on the
// IPv4 external addresses: the [::] listener already has the others.
func (m *Manager) reconcileLocked(listeners map[Key]Socket) (complete bool) {
	type portInfo struct {
		has4, has6, wild4, wild6 bool
		inodes                   []uint64
	}
	want := make(map[uint16]*portInfo)
	for _, s := range listeners {
		if slices.Contains(m.opts.Reserved, s.Port) {
			continue
		}
		a := s.Addr.Unmap()
		if !a.IsUnspecified() && a != loopback4 && a != loopback6 {
			continue
		}
		pi := want[s.Port]
		if pi == nil {
			pi = &portInfo{}
			want[s.Port] = pi
		}
		switch a {
		case loopback4:
			pi.has4 = true
		case loopback6:
			pi.has6 = true
		default:
			if a.Is4() {
				pi.wild4 = true
			} else {
				pi.wild6 = true
			}
		}
		pi.inodes = append(pi.inodes, s.Inode)
	}
	reachable := func(pi *portInfo) bool { return pi.wild4 || (pi.wild6 && !pi.has4) }
	for port, f := range m.forwards {
		if pi := want[port]; pi == nil || reachable(pi) {
			f.close()
			delete(m.forwards, port)
		}
	}
	complete = true
	for port, pi := range want {
		if reachable(pi) {
			continue
		}
		addrs := m.opts.ExternalAddrs
		if pi.wild6 {
			addrs = slices.DeleteFunc(slices.Clone(addrs), func(a netip.Addr) bool { return !a.Unmap().Is4() })
		}
		f := m.forwards[port]
		if f == nil {
			f = newForward(m.log, port)
			m.forwards[port] = f
		}
		slices.Sort(pi.inodes)
		f.setTargets(pi.has4, pi.has6, pi.inodes)
		if !f.ensure(addrs) {
			complete = false
		}
	}
	return complete
}

func (m *Manager) closeAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for port, f := range m.forwards {
		f.close()
		delete(m.forwards, port)
	}
}

func (m *Manager) kick() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Pause prepares for a snapshot: scanning stops and every forward listener
// and relayed connection is closed before Pause returns.
func (m *Manager) Pause() {
	m.mu.Lock()
	m.paused = true
	m.mu.Unlock()
	m.closeAll()
	m.kick()
}

// Resume restarts after a restore: the next scan starts at once, sees every
// listener as new and forwards again. It does not wait for that scan.
func (m *Manager) Resume() {
	m.mu.Lock()
	m.paused, m.reset, m.dirty = false, true, true
	m.mu.Unlock()
	m.kick()
}

// SetOptions replaces the options; a scan with the new ones starts at once
// (forwards of newly reserved ports close, listeners move to the new
// external addresses, the new interval applies from then on).
func (m *Manager) SetOptions(opts Options) {
	opts = opts.normalize(m.log)
	m.mu.Lock()
	m.opts, m.dirty = opts, true
	m.mu.Unlock()
	m.kick()
}

// Snapshot returns the current forwards, ordered by port.
func (m *Manager) Snapshot() []Forward {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Forward, 0, len(m.forwards))
	for _, f := range m.forwards {
		out = append(out, f.snapshot())
	}
	slices.SortFunc(out, func(a, b Forward) int { return int(a.Port) - int(b.Port) })
	return out
}
