package process

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/plugins/pluginkit/fdvault"
)

// adoptHold bounds how long an adopted process's output stays unread while
// its client streams re-attach (see proc.hold); its kernel buffer (64 KiB
// pipe, 4 KiB tty) holds what it writes meanwhile.
const adoptHold = 2 * time.Second

// waitState is an exit status that is not an *os.ProcessState (one reaped
// by envd-init, or read with WNOWAIT); it formats like one.
type waitState unix.WaitStatus

func (w waitState) ws() unix.WaitStatus { return unix.WaitStatus(w) }

func (w waitState) Exited() bool { return w.ws().Exited() }

// ExitCode is the exit code, or -1 when the process was killed by a signal.
func (w waitState) ExitCode() int {
	if !w.ws().Exited() {
		return -1
	}
	return w.ws().ExitStatus()
}

// String is what os.ProcessState.String says for the same status.
func (w waitState) String() string {
	st := w.ws()
	var s string
	switch {
	case st.Exited():
		s = "exit status " + strconv.Itoa(st.ExitStatus())
	case st.Signaled():
		s = "signal: " + st.Signal().String()
	case st.Stopped():
		s = "stop signal: " + st.StopSignal().String()
	case st.Continued():
		s = "continued"
	}
	if st.CoreDump() {
		s += " (core dumped)"
	}
	return s
}

// waitErr is what exec.Cmd.Wait would return for the status.
func (w waitState) waitErr() error {
	if w.Exited() && w.ExitCode() == 0 {
		return nil
	}
	return errors.New(w.String())
}

// statusFromSiginfo turns a waitid result into a wait status (the layout of
// siginfo_t for SIGCHLD: si_status is the int after si_pid and si_uid).
func statusFromSiginfo(info *unix.Siginfo) unix.WaitStatus {
	raw := (*[unsafe.Sizeof(*info)]byte)(unsafe.Pointer(info))
	status := *(*int32)(unsafe.Pointer(&raw[24]))
	switch info.Code {
	case 1: // CLD_EXITED
		return unix.WaitStatus((status & 0xff) << 8)
	case 2: // CLD_KILLED
		return unix.WaitStatus(status & 0x7f)
	case 3: // CLD_DUMPED
		return unix.WaitStatus(status&0x7f | 0x80)
	}
	return unix.WaitStatus(status)
}

// adoptedChild is a process a previous envd-proc started. It is envd-init's
// child now: signals go through the pidfd taken when it was started (never
// to a recycled pid), and its exit status comes from envd-init's reaper.
type adoptedChild struct {
	pid   int
	pidfd *os.File

	once   sync.Once
	exited chan struct{}
	status unix.WaitStatus
}

func newAdoptedChild(pid int, pidfd *os.File) *adoptedChild {
	return &adoptedChild{pid: pid, pidfd: pidfd, exited: make(chan struct{})}
}

// setExit records the status envd-init's reaper published.
func (c *adoptedChild) setExit(status unix.WaitStatus) {
	c.once.Do(func() {
		c.status = status
		close(c.exited)
	})
}

func (c *adoptedChild) sendSignal(sig syscall.Signal) error {
	rc, err := c.pidfd.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.PidfdSendSignal(int(fd), sig, nil, 0) }); err != nil {
		return err
	}
	if errors.Is(serr, unix.ESRCH) {
		return os.ErrProcessDone
	}
	return serr
}

func (c *adoptedChild) signal(sig syscall.Signal) error {
	select {
	case <-c.exited:
		return os.ErrProcessDone
	default:
	}
	return c.sendSignal(sig)
}

func (c *adoptedChild) signalGroup(sig syscall.Signal) error {
	// The group id is only ours while the leader lives: check through the
	// pidfd first (the window to a recycled group id is this one call).
	if err := c.signal(0); err != nil {
		return err
	}
	return unix.Kill(-c.pid, sig)
}

func (c *adoptedChild) awaitExit() (unix.WaitStatus, error) {
	<-c.exited
	return c.status, nil
}

func (c *adoptedChild) reap() (exitStatus, error) {
	<-c.exited
	_ = c.pidfd.Close()
	st := waitState(c.status)
	return st, st.waitErr()
}

// deposit hands the vault a record of a process just started and copies
// of its fds, so that it outlives this envd-proc.
func (s *Service) deposit(p *proc, pid int) {
	if s.vault == nil {
		return
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		// Without a pidfd a later envd-proc could not signal it safely.
		p.log.Warn("no pidfd: the process will not survive an envd-proc restart", zap.Error(err))
		return
	}
	pidfd := os.NewFile(uintptr(fd), "pidfd")
	defer pidfd.Close()
	rec := &fdvault.Record{Pid: p.pid, Seq: p.seq, Tag: p.tag, PTY: p.isPTY()}
	if b, err := proto.Marshal(p.config); err == nil {
		rec.Config = b
	}
	p.mu.Lock()
	if !p.deadline.IsZero() {
		rec.Deadline = p.deadline.UnixNano()
	}
	files := []*os.File{pidfd}
	if p.isPTY() {
		files = append(files, p.master)
	} else {
		files = append(files, p.stdout, p.stderr)
		if p.stdin != nil {
			files = append(files, p.stdin)
			rec.Stdin = true
		}
	}
	err = s.vault.Deposit(rec, files)
	p.mu.Unlock()
	if err != nil {
		p.log.Warn("deposit with the fd vault failed: the process will not survive an envd-proc restart", zap.Error(err))
	}
}

// Adopt takes over the processes a previous envd-proc left with the vault:
// the live ones are served again as if this envd-proc had started them,
// the ended ones are kept for Connect for the rest of their retention. It
// runs before the plugin serves.
func (s *Service) Adopt(v *fdvault.Client) error {
	s.vault = v
	if v == nil {
		return nil
	}
	// Exits pushed while the fetched processes are being set up wait here.
	s.mu.Lock()
	s.earlyExits = map[uint32]unix.WaitStatus{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.earlyExits = nil
		s.mu.Unlock()
	}()
	v.OnExit(s.adoptedExit)
	got, err := v.Fetch()
	if err != nil {
		return fmt.Errorf("fetching processes from the fd vault: %w", err)
	}
	for _, a := range got {
		if err := s.adopt(a); err != nil {
			s.log.Warn("process not adopted: ending it", zap.Uint32("pid", a.Rec.Pid), zap.Error(err))
			s.abandon(a)
		}
	}
	if len(got) > 0 {
		s.log.Info("adopted processes", zap.Int("count", len(got)))
	}
	return nil
}

// abandon ends a process that could not be adopted and has the vault drop
// it. Left running, it would be out of every client's reach (no List,
// Connect, SendSignal), its output unread: a pipe writer would block once
// the buffer fills, and the vault would hold its fds, and hand them to
// every later envd-proc, forever. So it gets what envd-proc's Shutdown
// gives the processes it ends: SIGKILL to its group, through the pidfd
// taken at its start (never a recycled pid). Its status is not kept:
// nothing here could serve it.
func (s *Service) abandon(a fdvault.Adopted) {
	if !a.Rec.Released && !a.Rec.Reaped && len(a.Files) > 0 {
		c := newAdoptedChild(int(a.Rec.Pid), a.Files[0])
		if err := c.signalGroup(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
			s.log.Warn("could not end a process that was not adopted", zap.Uint32("pid", a.Rec.Pid), zap.Error(err))
		}
	}
	for _, f := range a.Files {
		f.Close()
	}
	if err := s.vault.Forget(a.Rec.Pid, a.Rec.Seq); err != nil {
		s.log.Warn("fd vault: forget", zap.Uint32("pid", a.Rec.Pid), zap.Error(err))
	}
}

// adoptedExit receives envd-init's reap of an adopted process.
func (s *Service) adoptedExit(pid uint32, status int32) {
	s.mu.Lock()
	p := s.live[pid]
	if p == nil && s.earlyExits != nil {
		s.earlyExits[pid] = unix.WaitStatus(status)
	}
	s.mu.Unlock()
	if p == nil {
		return
	}
	if c, ok := p.child.(*adoptedChild); ok {
		c.setExit(unix.WaitStatus(status))
	}
}

func (s *Service) adopt(a fdvault.Adopted) error {
	rec := a.Rec
	cfg := &procpb.ProcessConfig{}
	if len(rec.Config) > 0 {
		if err := proto.Unmarshal(rec.Config, cfg); err != nil {
			return fmt.Errorf("config: %w", err)
		}
	}
	p := &proc{
		log:     s.log.With(zap.Uint32("pid", rec.Pid)),
		vault:   s.vault,
		pid:     rec.Pid,
		config:  cfg,
		tag:     rec.Tag,
		hub:     newHub(outputPolicy(rec.PTY), s.limits),
		stopOut: make(chan struct{}),
		cutOut:  make(chan struct{}),
		outDone: make(chan struct{}),

		handedOver: make(chan struct{}),
	}
	if rec.Released {
		// Ended under the previous envd-proc: only its end is left.
		st := waitState(rec.Status)
		p.end = endEvent(st, st.waitErr())
		p.hub.Close()
		close(p.outDone)
		s.mu.Lock()
		s.seq = max(s.seq, rec.Seq)
		p.seq = rec.Seq
		s.retainEnd(p)
		s.mu.Unlock()
		s.slimRetained(p)
		return nil
	}
	want := 3 // pidfd, stdout, stderr
	switch {
	case rec.PTY:
		want = 2 // pidfd, master
	case rec.Stdin:
		want = 4
	}
	if len(a.Files) != want {
		return fmt.Errorf("%d fds, want %d", len(a.Files), want)
	}
	child := newAdoptedChild(int(rec.Pid), a.Files[0])
	if rec.Reaped {
		child.setExit(unix.WaitStatus(rec.Status))
	}
	p.child = child
	if rec.PTY {
		p.master = a.Files[1]
	} else {
		p.stdout, p.stderr = a.Files[1], a.Files[2]
		if rec.Stdin {
			p.stdin = a.Files[3]
		}
	}
	if rec.Streams > 0 {
		p.holdFor(rec.Streams, adoptHold)
	}
	if !s.beginLifecycle() {
		return errors.New("shutting down")
	}
	s.mu.Lock()
	s.seq = max(s.seq, rec.Seq)
	p.seq = rec.Seq
	s.live[p.pid] = p
	if st, ok := s.earlyExits[p.pid]; ok {
		child.setExit(st)
	}
	s.mu.Unlock()
	if rec.Deadline != 0 {
		// Past deadlines fire at once.
		p.armDeadline(time.Unix(0, rec.Deadline))
	}
	p.startPumps()
	go s.lifecycle(p)
	p.log.Debug("process adopted", zap.Bool("pty", rec.PTY), zap.Bool("reaped", rec.Reaped), zap.Int("streams", rec.Streams))
	return nil
}

// holdFor keeps the output unread until n re-attached streams subscribed
// or d passed, so that every stream a client held open through the restart
// sees the output from the same byte on.
func (p *proc) holdFor(n int, d time.Duration) {
	p.hold = make(chan struct{})
	p.holdWant = n
	p.holdTimer = time.AfterFunc(d, p.release)
}

func (p *proc) release() {
	p.holdOnce.Do(func() { close(p.hold) })
}

// reattached counts a re-attached stream's subscription.
func (p *proc) reattached() {
	if p.hold == nil {
		return
	}
	p.mu.Lock()
	p.holdWant--
	done := p.holdWant <= 0
	p.mu.Unlock()
	if done {
		p.holdTimer.Stop()
		p.release()
	}
}
