package process

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/plugins/pluginkit/fdvault"
	"github.com/envd-project/envd/plugins/process/fanout"
)

const (
	pipeChunk = 32 << 10 // WIRE §5.1: pipe reads of at most 32 KiB
	ptyChunk  = 16 << 10 // WIRE §5.1: PTY reads of at most 16 KiB

	// drainGrace is how long the output of a signalled process may still
	// be read once its direct child is reaped, so that what it wrote
	// before dying reaches the streams, while pipes held open by
	// grandchildren no longer delay the end event.
	drainGrace = 100 * time.Millisecond
)

// exitStatus is what the end event is built from; *os.ProcessState
// implements it.
type exitStatus interface {
	ExitCode() int
	Exited() bool
	String() string
}

// child is how a process record signals and reaps its process. The only
// implementation today is forkedChild, a process this envd-proc started.
// An adopted process (see proc) would implement it with signals through a
// pidfd and the exit status reported by envd-init's reaper.
type child interface {
	// signal sends sig to the process itself (never to a recycled pid).
	signal(sig syscall.Signal) error
	// signalGroup sends sig to the process group the process leads. The
	// caller guarantees the process is not yet reaped, so the group id
	// still names this process's group.
	signalGroup(sig syscall.Signal) error
	// awaitExit blocks until the process has exited, without reaping it,
	// and returns its wait status.
	awaitExit() (unix.WaitStatus, error)
	// reap collects the exit status.
	reap() (exitStatus, error)
}

// forkedChild is a process started through os/exec; it is reaped only
// through its own exec.Cmd, never by a wildcard wait.
type forkedChild struct{ cmd *exec.Cmd }

func (c forkedChild) signal(sig syscall.Signal) error { return c.cmd.Process.Signal(sig) }

func (c forkedChild) signalGroup(sig syscall.Signal) error {
	return unix.Kill(-c.cmd.Process.Pid, sig)
}

func (c forkedChild) awaitExit() (unix.WaitStatus, error) {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, c.cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			return statusFromSiginfo(&info), err
		}
	}
}

func (c forkedChild) reap() (exitStatus, error) {
	err := c.cmd.Wait()
	if c.cmd.ProcessState == nil {
		return nil, err
	}
	return c.cmd.ProcessState, err
}

// proc is one process started through envd. Everything needed to serve it
// lives here rather than in the goroutines of the RPC that started it: the
// pid, the config and tag as sent, the fds envd-proc holds for it (PTY
// master, or the stdin write end and the stdout/stderr read ends), its kill
// deadline, and the fan-out hub. The lifecycle goroutine is owned by the
// Service.
//
// Adoption across a plugin restart (ARCHITECTURE principle 4): after
// register, envd-proc deposits a pidfd and duplicates of the fds it holds
// (master, or stdout/stderr/stdin) with envd-init's fd vault, with a record
// of (pid, seq, tag, config, mode, deadline) (deposit). When envd-proc
// dies, the child re-parents to envd-init, which reaps it and keeps the
// status. The next envd-proc fetches records and fds back and rebuilds
// each proc with the same fields, an adoptedChild and the same pumps and
// lifecycle (Adopt); nothing else in this package depends on having forked
// the process itself.
type proc struct {
	log    *zap.Logger
	vault  *fdvault.Client // nil without one
	pid    uint32
	seq    uint64 // start order; guarded by Service.mu after register
	tag    *string
	config *procpb.ProcessConfig
	child  child
	hub    *fanout.Hub[*procpb.ProcessEvent]

	// Output sources (read by the pumps, closed by the lifecycle).
	master *os.File // PTY master; nil in pipe mode
	stdout *os.File
	stderr *os.File

	inMu sync.Mutex // serialises writes so concurrent inputs never interleave

	mu        sync.Mutex
	stdin     *os.File  // pipe write end; nil when disabled or closed
	reaped    bool      // set just before the reap: the pid is no longer ours after it
	deadline  time.Time // wall-clock kill deadline; zero means none
	killTimer *time.Timer

	stopOnce sync.Once
	stopOut  chan struct{} // closed to stop waiting for output EOF (KILL/TERM, deadline)
	cutOnce  sync.Once
	cutOut   chan struct{} // closed when the drain after an early stop is over: paused readers give up
	outDone  chan struct{} // closed when every pump has returned
	pausing  int           // pumps that pause for a full subscriber (pipe mode)

	end    *procpb.ProcessEvent // written before hub.Close, read after the subscriber's channel closes
	expiry *time.Timer          // retention; guarded by Service.mu

	// hold, when not nil, keeps the pumps from reading until it closes:
	// an adopted process waits for its re-attached streams (holdFor).
	hold      chan struct{}
	holdWant  int // re-attachments still expected; guarded by mu
	holdTimer *time.Timer
	holdOnce  sync.Once

	// handedOver is closed when a hot-swap hands the process to the next
	// envd-proc: the pumps stop, the streams end after what was read, and
	// this envd-proc never reaps it (Service.Handover).
	handedOver chan struct{}
}

func (p *proc) isHandedOver() bool {
	select {
	case <-p.handedOver:
		return true
	default:
		return false
	}
}

func (p *proc) isPTY() bool { return p.master != nil }

// startPumps starts one reader per output fd; outDone closes when all end.
func (p *proc) startPumps() {
	var wg sync.WaitGroup
	if p.master != nil {
		wg.Add(1)
		go p.pump(&wg, p.master, ptyChunk, ptyEvent)
	}
	for _, f := range []*os.File{p.stdout, p.stderr} {
		if f != nil {
			p.pausing++
		}
	}
	if p.stdout != nil {
		wg.Add(1)
		go p.pump(&wg, p.stdout, pipeChunk, stdoutEvent)
	}
	if p.stderr != nil {
		wg.Add(1)
		go p.pump(&wg, p.stderr, pipeChunk, stderrEvent)
	}
	go func() {
		wg.Wait()
		close(p.outDone)
	}()
}

var chunkPool = sync.Pool{New: func() any { b := make([]byte, pipeChunk); return &b }}

// pump reads f until EOF (EIO on a PTY master whose slave is gone) or until
// the lifecycle cuts it off with a read deadline. Chunks nobody subscribes
// to are dropped without being copied.
func (p *proc) pump(wg *sync.WaitGroup, f *os.File, size int, wrap func([]byte) *procpb.ProcessEvent) {
	defer wg.Done()
	bp := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(bp)
	buf := (*bp)[:size]
	// Pipe output waits while every subscriber is full: the process then
	// blocks on a full pipe instead of losing output, as the reference
	// does; a terminal drops output for a lagging subscriber instead.
	pause := !p.isPTY()
	if p.hold != nil {
		select {
		case <-p.hold:
		case <-p.cutOut:
			return
		}
	}
	for {
		if pause {
			// Still paused after a KILL or TERM: the process may live on
			// (a caught TERM), and a lone slow reader must lose nothing
			// until the drain after the reap is over.
			p.hub.WaitRoom(p.pausing, size, p.cutOut)
			select {
			case <-p.cutOut:
				return
			default:
			}
		}
		n, err := f.Read(buf)
		if n > 0 && p.hub.HasSubscribers() {
			p.hub.Publish(wrap(bytes.Clone(buf[:n])))
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.EIO) &&
				!errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, os.ErrClosed) {
				p.log.Debug("output read failed", zap.Error(err))
			}
			return
		}
	}
}

// newHub returns an output hub that accounts chunks by their data size and
// merges consecutive chunks of the same output up to the read size.
func newHub(policy fanout.Policy, limits fanout.Limits) *fanout.Hub[*procpb.ProcessEvent] {
	return fanout.New(policy, limits, eventSize, mergeData)
}

func eventSize(ev *procpb.ProcessEvent) int {
	d := ev.GetData()
	return len(d.GetStdout()) + len(d.GetStderr()) + len(d.GetPty())
}

// mergeData joins two data events of the same output into a new one of at
// most one read's size (32 KiB pipe, 16 KiB PTY), never touching either.
func mergeData(last, v *procpb.ProcessEvent) (*procpb.ProcessEvent, bool) {
	a, b := last.GetData(), v.GetData()
	if a == nil || b == nil {
		return nil, false
	}
	join := func(x, y []byte, limit int) ([]byte, bool) {
		if len(x)+len(y) > limit {
			return nil, false
		}
		return append(append(make([]byte, 0, len(x)+len(y)), x...), y...), true
	}
	switch {
	case a.GetStdout() != nil && b.GetStdout() != nil:
		if out, ok := join(a.GetStdout(), b.GetStdout(), pipeChunk); ok {
			return stdoutEvent(out), true
		}
	case a.GetStderr() != nil && b.GetStderr() != nil:
		if out, ok := join(a.GetStderr(), b.GetStderr(), pipeChunk); ok {
			return stderrEvent(out), true
		}
	case a.GetPty() != nil && b.GetPty() != nil:
		if out, ok := join(a.GetPty(), b.GetPty(), ptyChunk); ok {
			return ptyEvent(out), true
		}
	}
	return nil, false
}

func ptyEvent(b []byte) *procpb.ProcessEvent {
	return dataEvent(&procpb.ProcessEvent_DataEvent{Output: &procpb.ProcessEvent_DataEvent_Pty{Pty: b}})
}

func stdoutEvent(b []byte) *procpb.ProcessEvent {
	return dataEvent(&procpb.ProcessEvent_DataEvent{Output: &procpb.ProcessEvent_DataEvent_Stdout{Stdout: b}})
}

func stderrEvent(b []byte) *procpb.ProcessEvent {
	return dataEvent(&procpb.ProcessEvent_DataEvent{Output: &procpb.ProcessEvent_DataEvent_Stderr{Stderr: b}})
}

func dataEvent(d *procpb.ProcessEvent_DataEvent) *procpb.ProcessEvent {
	return &procpb.ProcessEvent{Event: &procpb.ProcessEvent_Data{Data: d}}
}

func startEvent(pid uint32) *procpb.ProcessEvent {
	return &procpb.ProcessEvent{Event: &procpb.ProcessEvent_Start{Start: &procpb.ProcessEvent_StartEvent{Pid: pid}}}
}

func keepaliveEvent() *procpb.ProcessEvent {
	return &procpb.ProcessEvent{Event: &procpb.ProcessEvent_Keepalive{Keepalive: &procpb.ProcessEvent_KeepAlive{}}}
}

// endEvent renders an exit the way Go's os/exec reports it (WIRE §5.1):
// status is ProcessState.String(), error is the Wait error (unset on exit 0).
func endEvent(st exitStatus, waitErr error) *procpb.ProcessEvent {
	e := &procpb.ProcessEvent_EndEvent{ExitCode: -1}
	if st != nil {
		e.ExitCode = int32(st.ExitCode())
		e.Exited = st.Exited()
		e.Status = st.String()
	}
	if waitErr != nil {
		msg := waitErr.Error()
		e.Error = &msg
	}
	return &procpb.ProcessEvent{Event: &procpb.ProcessEvent_End{End: e}}
}

// lifecycle waits for the process's output to end (or to be cut short by a
// KILL/TERM or the deadline), reaps it, and publishes the end event. Its
// ordering keeps the pid ours until the record leaves the live table: the
// process is reaped only after the output is drained, so while it is
// listed its pid (and process group id) cannot be recycled.
func (s *Service) lifecycle(p *proc) {
	defer s.running.Done()
	select {
	case <-p.outDone:
	case <-p.stopOut:
	case <-p.handedOver:
	}
	if p.isHandedOver() {
		return
	}
	ws, err := p.child.awaitExit()
	if p.isHandedOver() {
		// Exited during the swap: left unreaped, the next envd-proc gets
		// its status from envd-init, which reaps it once we are gone.
		return
	}
	if err != nil {
		p.log.Warn("waiting for process exit failed", zap.Error(err))
	} else if s.vault != nil {
		// Queued before the reap: once reaped, the pid may name another
		// process, and a record still live in the vault would be matched to it.
		if err := s.vault.Exiting(p.pid, p.seq, int32(ws)); err != nil {
			p.log.Warn("fd vault did not take the exit", zap.Error(err))
		}
	}
	p.mu.Lock()
	p.reaped = true
	if p.killTimer != nil {
		p.killTimer.Stop()
	}
	p.mu.Unlock()
	st, werr := p.child.reap()

	select {
	case <-p.outDone:
	default:
		// Stopped early: read what is already buffered, then give up on
		// pipes that grandchildren may keep open.
		cut := time.Now().Add(drainGrace)
		for _, f := range []*os.File{p.master, p.stdout, p.stderr} {
			if f != nil {
				_ = f.SetReadDeadline(cut)
			}
		}
		select {
		case <-p.outDone:
		case <-time.After(drainGrace):
			// Readers paused for a full subscriber give up too; what it
			// has queued, and the end event, still reach it.
			p.cutOutput()
			select {
			case <-p.outDone:
			case <-time.After(time.Second):
				p.log.Warn("output readers did not stop")
			}
		}
	}
	// Out of the live table first, so no input or resize reaches the fds
	// being closed; Connect finds it among the retained and waits for the end.
	s.reaped(p)
	for _, f := range p.closeFiles() {
		_ = f.Close()
	}
	p.end = endEvent(st, werr)
	p.hub.Close()
	p.log.Debug("process ended", zap.String("status", p.end.GetEnd().GetStatus()))
	s.slimRetained(p)
}

// closeFiles detaches every fd from the record and returns them for closing.
func (p *proc) closeFiles() []*os.File {
	p.mu.Lock()
	defer p.mu.Unlock()
	var fs []*os.File
	for _, f := range []*os.File{p.master, p.stdin, p.stdout, p.stderr} {
		if f != nil {
			fs = append(fs, f)
		}
	}
	p.stdin = nil
	return fs
}

func (p *proc) stopOutput() { p.stopOnce.Do(func() { close(p.stopOut) }) }

func (p *proc) cutOutput() { p.cutOnce.Do(func() { close(p.cutOut) }) }

// sendSignal delivers a SendSignal. KILL and TERM also stop waiting for
// output EOF, so grandchildren holding the pipes cannot hold back the end
// event (WIRE §5.6).
func (p *proc) sendSignal(sig syscall.Signal) error {
	err := p.child.signal(sig)
	if sig == syscall.SIGKILL || sig == syscall.SIGTERM {
		p.stopOutput()
	}
	return err
}

// killAll SIGKILLs the process group and the process (Shutdown).
func (p *proc) killAll() {
	p.mu.Lock()
	if !p.reaped {
		_ = p.child.signalGroup(syscall.SIGKILL)
	}
	p.mu.Unlock()
	_ = p.child.signal(syscall.SIGKILL)
	p.stopOutput()
}

// armDeadline schedules the SIGKILL of the direct child at d (WIRE §5.1:
// independent of any stream).
func (p *proc) armDeadline(d time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.deadline = d.Round(0) // wall clock only, see SnapshotRestored
	p.killTimer = time.AfterFunc(time.Until(d), p.deadlineKill)
}

func (p *proc) deadlineKill() {
	p.log.Debug("kill deadline reached")
	_ = p.child.signal(syscall.SIGKILL)
	p.stopOutput()
}

// rearmDeadline re-schedules a pending kill timer from the wall clock.
func (p *proc) rearmDeadline() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reaped || p.killTimer == nil || p.deadline.IsZero() {
		return
	}
	if p.killTimer.Stop() {
		p.killTimer.Reset(time.Until(p.deadline))
	}
}

var errStdinClosed = errors.New("stdin not enabled or closed")

// writeStdin writes to the stdin pipe.
func (p *proc) writeStdin(ctx context.Context, data []byte) error {
	if p.isPTY() {
		return errors.New("tty assigned to process — input should be written to the pty, not the stdin")
	}
	p.mu.Lock()
	f := p.stdin
	p.mu.Unlock()
	if f == nil {
		return errStdinClosed
	}
	if err := p.write(ctx, f, data); err != nil {
		if errors.Is(err, os.ErrClosed) {
			return errStdinClosed
		}
		return fmt.Errorf("error writing to stdin of process '%d': %w", p.pid, err)
	}
	return nil
}

// writeTTY writes to the PTY master (keystrokes, Ctrl-C, Ctrl-D).
func (p *proc) writeTTY(ctx context.Context, data []byte) error {
	if !p.isPTY() {
		return errors.New("tty not assigned to process — input should be written to the stdin, not the tty")
	}
	if err := p.write(ctx, p.master, data); err != nil {
		return fmt.Errorf("error writing to tty of process '%d': %w", p.pid, err)
	}
	return nil
}

// write writes all of data unless ctx ends first; f is pollable, so a
// deadline interrupts a write blocked on a full pipe or tty buffer.
func (p *proc) write(ctx context.Context, f *os.File, data []byte) error {
	p.inMu.Lock()
	defer p.inMu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	var (
		mu     sync.Mutex
		active = true
	)
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if active {
			_ = f.SetWriteDeadline(time.Unix(1, 0))
		}
	})
	_, err := f.Write(data)
	stop()
	mu.Lock()
	active = false
	mu.Unlock()
	_ = f.SetWriteDeadline(time.Time{})
	if errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return err
}

// closeStdin closes the stdin pipe; closing a closed or disabled stdin succeeds.
func (p *proc) closeStdin() error {
	if p.isPTY() {
		return errors.New("cannot close stdin for PTY process — send Ctrl+D (0x04) instead")
	}
	p.mu.Lock()
	f := p.stdin
	p.stdin = nil
	p.mu.Unlock()
	if f == nil {
		return nil
	}
	if err := f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return err
	}
	// The vault's copy too, or the process never sees EOF.
	if p.vault != nil {
		if err := p.vault.CloseStdin(p.pid); err != nil {
			return err
		}
	}
	return nil
}

// resize sets the terminal window size; the kernel sends SIGWINCH to the
// foreground process group.
func (p *proc) resize(cols, rows uint32) error {
	if !p.isPTY() {
		return errors.New("tty not assigned to process")
	}
	return setWinsize(p.master, cols, rows)
}

// setWinsize issues TIOCSWINSZ through SyscallConn, which (unlike Fd)
// keeps the master in non-blocking, pollable mode.
func setWinsize(f *os.File, cols, rows uint32) error {
	ws := &unix.Winsize{Row: clamp16(rows), Col: clamp16(cols)}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ioErr error
	if err := rc.Control(func(fd uintptr) { ioErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, ws) }); err != nil {
		return err
	}
	return ioErr
}

func clamp16(v uint32) uint16 {
	if v > 0xffff {
		return 0xffff
	}
	return uint16(v)
}
