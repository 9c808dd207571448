// Package process is envd-proc's process service (WIRE §5) and runs in
// envd-proc: it starts user commands in pipe or PTY mode, fans their output
// out to any number of streams, and takes input, resizes and signals for them.
//
// The process table belongs to the Service, not to any RPC: a Start stream
// that ends (client gone, deadline hit) leaves its process running, and each
// process has one lifecycle goroutine that drains its output, reaps it
// through its own exec.Cmd (never wait4(-1): envd-init is the one reaper of
// orphans) and publishes the end event.
package process

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/internal/cgroups"
	"github.com/envd-project/envd/internal/users"
	"github.com/envd-project/envd/plugins/pluginkit/defaults"
	"github.com/envd-project/envd/plugins/pluginkit/fdvault"
	"github.com/envd-project/envd/plugins/pluginkit/service"
	"github.com/envd-project/envd/plugins/process/fanout"
)

const (
	// retention is how long an exited process's end event stays available
	// to Connect (WIRE §5.2, E2B behaviour).
	retention = 30 * time.Second
)

// subscriberLimits bound the output queued for one subscriber that reads
// slower than the process writes: 8 MiB, counting about what a queued
// event costs beyond its data, so a flood of tiny writes is bounded too
// (consecutive chunks of one output merge, so it rarely gets there).
// Unmerged chunk data is shared by all subscribers and held only while
// someone lags. A burst beyond this cuts a pipe subscriber off (or drops
// terminal output for it), see package fanout.
//
// Pipe output pauses (the kernel holds the writer back) once every
// subscriber has 256 KiB queued, eight reads' worth: enough to keep a
// stream busy, while a command printing megabytes to one slow client
// (the SDK's own tests print 1 MB at once) no longer holds them in
// envd-proc's heap, and the heap's growth goal with them.
var subscriberLimits = fanout.Limits{Bytes: 8 << 20, Overhead: 160, Pause: 256 << 10}

// Service implements service.Process.
type Service struct {
	log  *zap.Logger
	defs *defaults.Store
	db   *users.DB
	cg   cgroups.Manager
	wrap wrapper

	// limits and retain are the per-subscriber bound and the end-event
	// retention (fields so tests can shrink them).
	limits fanout.Limits
	retain time.Duration

	// vault keeps each process's fds and record in envd-init so that it
	// outlives this envd-proc (nil: standalone, nothing survives us).
	vault *fdvault.Client

	mu       sync.Mutex
	seq      uint64
	live     map[uint32]*proc // started and not yet reaped
	retained map[uint32]*proc // exited within the last 30 s
	closing  bool
	handover chan struct{} // closed by Handover
	// earlyExits holds exits of adopted processes pushed before they were
	// registered (only while Adopt runs).
	earlyExits map[uint32]unix.WaitStatus
	running    sync.WaitGroup // one per lifecycle goroutine
	// forgot is called after a retained process is dropped (may be nil;
	// set before serving).
	forgot func()
}

// OnForget sets fn to be called each time a retained process is dropped at
// the end of its retention: its memory is garbage from then on, with no
// request to say so (envd-proc's idle trim counts it as activity, so the
// memory goes back to the OS once the drops are over). Call before serving.
func (s *Service) OnForget(fn func()) { s.forgot = fn }

// retainEnd keeps p, which has ended, for the retention period; the
// caller holds s.mu.
func (s *Service) retainEnd(p *proc) {
	s.retained[p.pid] = p
	// The closure holds the pid, not p: p would stay reachable through
	// the timer for the whole retention, slimmed or not.
	pid := p.pid
	var expiry *time.Timer
	expiry = time.AfterFunc(s.retain, func() {
		s.mu.Lock()
		// The record may have been slimmed (a new *proc) since: the
		// timer, which moves with it, says whether it is still this one.
		r := s.retained[pid]
		dropped := r != nil && r.expiry == expiry
		if dropped {
			delete(s.retained, pid)
		}
		s.mu.Unlock()
		if dropped && s.forgot != nil {
			s.forgot()
		}
	})
	p.expiry = expiry
}

// slimRetained replaces p's record in the retention table, once its end
// event is published, by one that holds only what Connect to an ended
// process reads: pid, tag and start order (selectors), the closed hub
// (a shared one: subscribing to it yields done at once) and the end event. The full
// record keeps the config, the exec.Cmd with its environment and
// ProcessState, the closed os.Files, a logger with its own encoder buffer
// and the timers: ~6 KiB a process, which a burst of short commands
// (hundreds within the 30 s retention) held for 30 s for no reader.
// Requests that looked p up before keep using p itself; nothing changes
// for them.
func (s *Service) slimRetained(p *proc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.retained[p.pid] != p {
		return // superseded by a new process, dropped by Shutdown
	}
	s.retained[p.pid] = &proc{
		pid: p.pid, seq: p.seq, tag: p.tag, hub: endedHub, end: p.end, expiry: p.expiry,
		log: s.log,
	}
}

// endedHub is the hub of every slim retained record: closed, so a
// subscriber is done at once and is sent the record's end event.
var endedHub = func() *fanout.Hub[*procpb.ProcessEvent] {
	h := newHub(fanout.DropSubscriber, subscriberLimits)
	h.Close()
	return h
}()

var _ service.Process = (*Service)(nil)

// New returns a process service. db nil means users.Default; cg nil means
// cgroups.Noop.
func New(log *zap.Logger, defs *defaults.Store, db *users.DB, cg cgroups.Manager) *Service {
	if log == nil {
		log = zap.NewNop()
	}
	if defs == nil {
		defs = defaults.NewStore(nil)
	}
	if db == nil {
		db = users.Default
	}
	if cg == nil {
		cg = cgroups.Noop{}
	}
	return &Service{
		log:      log,
		defs:     defs,
		db:       db,
		cg:       cg,
		wrap:     newWrapper(exec.LookPath),
		limits:   subscriberLimits,
		retain:   retention,
		live:     map[uint32]*proc{},
		retained: map[uint32]*proc{},
		handover: make(chan struct{}),
	}
}

// register puts a freshly started process into the live table. It fails
// once Shutdown has begun; the caller then kills what it started.
func (s *Service) register(p *proc) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.seq++
	p.seq = s.seq
	s.live[p.pid] = p
	// A new process with the same pid or tag supersedes a retained end.
	delete(s.retained, p.pid)
	if p.tag != nil {
		for pid, r := range s.retained {
			if r.tag != nil && *r.tag == *p.tag {
				delete(s.retained, pid)
			}
		}
	}
	return true
}

// beginLifecycle accounts for a lifecycle goroutine about to start; it
// fails once Shutdown has begun so that Shutdown's wait covers every one.
func (s *Service) beginLifecycle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.running.Add(1)
	return true
}

// reaped moves p from the live table to the retention table. It is called
// after p was reaped and before its end event is published, so a Connect
// always finds the process in one of the two tables (and, subscribing to a
// hub not yet closed, still receives the end).
func (s *Service) reaped(p *proc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.live[p.pid] == p {
		delete(s.live, p.pid)
	}
	if s.closing {
		return
	}
	s.retainEnd(p)
}

func errNoSelector() error {
	return connect.NewError(connect.CodeUnimplemented, fmt.Errorf("invalid process selector: neither pid nor tag set"))
}

func errNotFound(sel *procpb.ProcessSelector) error {
	if _, ok := sel.GetSelector().(*procpb.ProcessSelector_Tag); ok {
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("process with tag %s not found", sel.GetTag()))
	}
	return connect.NewError(connect.CodeNotFound, fmt.Errorf("process with pid %d not found", sel.GetPid()))
}

// lookup resolves a selector against the live table (WIRE §5.7); with
// withRetained it also finds processes that exited in the last 30 s. A tag
// matches the earliest-started live process carrying it, searching all.
func (s *Service) lookup(sel *procpb.ProcessSelector, withRetained bool) (*proc, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tables := []map[uint32]*proc{s.live}
	if withRetained {
		tables = append(tables, s.retained)
	}
	switch v := sel.GetSelector().(type) {
	case *procpb.ProcessSelector_Pid:
		for _, t := range tables {
			if p, ok := t[v.Pid]; ok {
				return p, nil
			}
		}
	case *procpb.ProcessSelector_Tag:
		for _, t := range tables {
			var best *proc
			for _, p := range t {
				if p.tag != nil && *p.tag == v.Tag && (best == nil || p.seq < best.seq) {
					best = p
				}
			}
			if best != nil {
				return best, nil
			}
		}
	default:
		return nil, errNoSelector()
	}
	return nil, errNotFound(sel)
}

// List implements service.Process: every process not yet reaped, with its
// config as sent, in start order.
func (s *Service) List(ctx context.Context, req *procpb.ListRequest) (*procpb.ListResponse, error) {
	s.mu.Lock()
	procs := make([]*proc, 0, len(s.live))
	for _, p := range s.live {
		procs = append(procs, p)
	}
	s.mu.Unlock()
	slices.SortFunc(procs, func(a, b *proc) int { return cmp.Compare(a.seq, b.seq) })
	resp := &procpb.ListResponse{Processes: make([]*procpb.ProcessInfo, 0, len(procs))}
	for _, p := range procs {
		resp.Processes = append(resp.Processes, &procpb.ProcessInfo{Config: p.config, Pid: p.pid, Tag: p.tag})
	}
	return resp, nil
}

// Shutdown SIGKILLs every live process and its process group, waits until
// each is reaped and its streams have received the end event, and refuses
// new Starts. It is idempotent; ctx bounds the wait.
func (s *Service) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	procs := make([]*proc, 0, len(s.live))
	for _, p := range s.live {
		procs = append(procs, p)
	}
	for pid, p := range s.retained {
		if p.expiry != nil {
			p.expiry.Stop()
		}
		delete(s.retained, pid)
	}
	s.mu.Unlock()

	for _, p := range procs {
		p.killAll()
	}
	done := make(chan struct{})
	go func() {
		s.running.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		n := len(s.live)
		s.mu.Unlock()
		return fmt.Errorf("process shutdown: %d processes not reaped: %w", n, ctx.Err())
	}
}

// SnapshotPrepare is called before the VM is paused for a snapshot. The
// process service has nothing to quiesce: children, pipes and PTYs are
// kernel objects captured with the VM, output readers sit in the netpoller,
// and no timer misbehaves while the VM is frozen. It drops nothing, so
// every stream and process stays usable after the restore.
func (s *Service) SnapshotPrepare(ctx context.Context) error {
	s.mu.Lock()
	n := len(s.live)
	s.mu.Unlock()
	s.log.Debug("snapshot prepare", zap.Int("live_processes", n))
	return nil
}

// SnapshotRestored is called after the VM resumed and its wall clock was
// set again (after /init). Go timers run on the monotonic clock, which in a
// restored guest does not count the time the VM spent paused, so a kill
// deadline would be pushed back by the length of the pause. A deadline is
// the client's wall-clock intent (Connect-Timeout-Ms), so every pending
// kill timer is re-armed from the wall clock: processes whose deadline
// passed during the pause are killed now. Streams and processes are left
// as they are.
func (s *Service) SnapshotRestored(ctx context.Context) error {
	s.mu.Lock()
	procs := make([]*proc, 0, len(s.live))
	for _, p := range s.live {
		procs = append(procs, p)
	}
	s.mu.Unlock()
	for _, p := range procs {
		p.rearmDeadline()
	}
	return nil
}

// Handover prepares a hot-swap: this envd-proc stops taking Starts, stops
// reading every process's output, and ends each output stream after the
// last byte it read, so that envd-init attaches the stream to the next
// envd-proc, which reads on from the next byte: every byte reaches every
// stream exactly once, in order. Open StreamInput calls end the same way.
// The processes themselves, their records and fds in the vault are left
// as they are, and never reaped here.
func (s *Service) Handover(ctx context.Context) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil
	}
	s.closing = true
	close(s.handover)
	procs := make([]*proc, 0, len(s.live))
	for pid, p := range s.live {
		procs = append(procs, p)
		delete(s.live, pid)
	}
	s.mu.Unlock()
	past := time.Unix(1, 0)
	for _, p := range procs {
		close(p.handedOver)
		p.cutOutput() // pumps paused for room give up without reading
		for _, f := range []*os.File{p.master, p.stdout, p.stderr} {
			if f != nil {
				_ = f.SetReadDeadline(past)
			}
		}
	}
	var errs []error
	for _, p := range procs {
		select {
		case <-p.outDone:
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("output reader of process %d did not stop: %w", p.pid, ctx.Err()))
		}
		// Every byte read is queued for the streams; they end after it.
		p.hub.Close()
	}
	s.log.Info("processes handed over", zap.Int("count", len(procs)))
	return errors.Join(errs...)
}
