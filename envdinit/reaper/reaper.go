// Package reaper is envd-init's single reaper and runs in envd-init.
// As PID 1, or as a child subreaper outside a VM, envd-init inherits every
// orphan; one loop reaps all children with wait4(-1) and publishes their exit
// statuses. Nothing else in envd-init may wait on a pid: a child started
// through Start is registered before it can be reaped, so its status reaches
// its owner and is never stolen.
package reaper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Exit is one reaped child.
type Exit struct {
	Pid    int
	Status unix.WaitStatus
}

// String formats the exit like os.ProcessState does.
func (e Exit) String() string {
	switch {
	case e.Status.Exited():
		return fmt.Sprintf("exit status %d", e.Status.ExitStatus())
	case e.Status.Signaled():
		return "signal: " + e.Status.Signal().String()
	}
	return fmt.Sprintf("wait status %d", e.Status)
}

// Reaper reaps every child of this process.
type Reaper struct {
	log     *zap.Logger
	mu      sync.Mutex
	owned   map[int]chan Exit
	orphans uint64
	sigs    chan os.Signal
	done    chan struct{}
	// orphan, when set, is offered every reaped child nobody started
	// through Start (the fd vault keeps user processes' statuses).
	orphan func(pid int, ws unix.WaitStatus) bool
}

// OnOrphan sets the receiver of orphans' exits; it returns whether it
// knew the pid. Set it before the children it cares about can exit.
func (r *Reaper) OnOrphan(fn func(pid int, ws unix.WaitStatus) bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.orphan = fn
}

// MakeSubreaper makes this process inherit orphaned descendants when it is
// not PID 1 (outside a VM, with --isnotfc).
func MakeSubreaper() error {
	if os.Getpid() == 1 {
		return nil
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_CHILD_SUBREAPER): %w", err)
	}
	return nil
}

// New starts the reap loop.
func New(log *zap.Logger) *Reaper {
	r := &Reaper{log: log, owned: map[int]chan Exit{}, sigs: make(chan os.Signal, 1), done: make(chan struct{})}
	signal.Notify(r.sigs, syscall.SIGCHLD)
	go r.loop()
	// A child may have exited before the handler was installed.
	r.sigs <- syscall.SIGCHLD
	return r
}

// Close stops the loop.
func (r *Reaper) Close() {
	signal.Stop(r.sigs)
	close(r.done)
}

func (r *Reaper) loop() {
	for {
		select {
		case <-r.done:
			return
		case <-r.sigs:
			r.reapAll()
		}
	}
}

func (r *Reaper) reapAll() {
	for {
		var ws unix.WaitStatus
		// Holding the lock across wait4 orders it with Start: a child being
		// started is registered before we can reap it.
		r.mu.Lock()
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err != nil || pid <= 0 {
			r.mu.Unlock()
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		ch, ok := r.owned[pid]
		delete(r.owned, pid)
		if !ok {
			r.orphans++
		}
		orphan := r.orphan
		r.mu.Unlock()
		exit := Exit{Pid: pid, Status: ws}
		if ok {
			ch <- exit
			close(ch)
			continue
		}
		if orphan != nil && orphan(pid, ws) {
			r.log.Debug("reaped a user process of a gone envd-proc", zap.Int("pid", pid), zap.Stringer("status", exit))
			continue
		}
		r.log.Debug("reaped orphan", zap.Int("pid", pid), zap.Stringer("status", exit))
	}
}

// Orphans is the number of reaped children nobody owned.
func (r *Reaper) Orphans() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.orphans
}

// Start starts cmd and returns a channel that receives its exit once. The
// caller must never call cmd.Wait; it should set Stdin/Stdout/Stderr to
// *os.File values (or nil) so os/exec starts no copying goroutines that only
// Wait would end.
func (r *Reaper) Start(cmd *exec.Cmd) (<-chan Exit, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := make(chan Exit, 1)
	r.owned[cmd.Process.Pid] = ch
	return ch, nil
}

// Run starts cmd, waits for it and returns an *exec.ExitError-like error for
// a non-zero exit. Stdout and stderr must be nil or *os.File.
func (r *Reaper) Run(cmd *exec.Cmd) error {
	ch, err := r.Start(cmd)
	if err != nil {
		return err
	}
	exit := <-ch
	_ = cmd.Process.Release()
	if exit.Status.Exited() && exit.Status.ExitStatus() == 0 {
		return nil
	}
	return fmt.Errorf("%s: %s", cmd.Path, exit)
}

// RunFunc runs a command to completion and returns its combined output.
// Everything envd-init runs goes through one, so that the reaper (and
// nothing else) waits for it.
type RunFunc func(ctx context.Context, name string, args ...string) ([]byte, error)

// outputLimit bounds what is kept of a command's output.
const outputLimit = 1 << 20

// outputGrace is how long output is still read after the command exits.
const outputGrace = time.Second

// Output is the reaper's RunFunc: the command's status comes from the
// reaper's publication, never from a wait of its own. ctx kills it.
func (r *Reaper) Output(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	// Its own group, so that ctx ends its children too (mount forks
	// mount.nfs, which retries for minutes).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("%s: output pipe: %w", name, err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	ch, err := r.Start(cmd)
	pw.Close()
	if err != nil {
		pr.Close()
		return nil, err
	}
	out := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(pr, outputLimit))
		_, _ = io.Copy(io.Discard, pr) // a chatty command must not block on a full pipe
		pr.Close()
		out <- b
	}()
	var exit Exit
	select {
	case exit = <-ch:
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Process.Kill()
		exit = <-ch
	}
	_ = cmd.Process.Release()
	// A daemon the command left behind may hold the pipe open for good:
	// take what is there and stop waiting shortly after the exit.
	_ = pr.SetReadDeadline(time.Now().Add(outputGrace))
	b := <-out
	if exit.Status.Exited() && exit.Status.ExitStatus() == 0 {
		return b, nil
	}
	if ctx.Err() != nil {
		return b, fmt.Errorf("%s: %s: %w", name, exit, ctx.Err())
	}
	return b, fmt.Errorf("%s: %s", name, exit)
}

// ExecOutput is a RunFunc for processes that run no reaper (tests, tools).
func ExecOutput(ctx context.Context, name string, args ...string) ([]byte, error) {
	return exec.CommandContext(ctx, name, args...).CombinedOutput()
}
