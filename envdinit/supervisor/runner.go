package supervisor

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"

	"github.com/envd-project/envd/envdinit/reaper"
	"github.com/hashicorp/go-plugin/runner"
)

// reapedRunner is a go-plugin runner whose process is reaped by envd-init's
// one reaper instead of exec.Cmd.Wait, so the reaper's wait4(-1) never steals
// a plugin's exit status from go-plugin.
type reapedRunner struct {
	reaper *reaper.Reaper
	cmd    *exec.Cmd
	stdout *os.File
	stderr *os.File
	outW   *os.File
	errW   *os.File

	exited chan struct{}
	once   sync.Once
	exit   reaper.Exit

	// mu orders Start with a Kill from another goroutine (a stop during
	// the handshake); killed makes a Kill before Start stick.
	mu     sync.Mutex
	killed bool
	pid    int  // once started; ID must not read cmd.Process, which Release changes
	reaped bool // the Process is released: Kill has nothing to do

	// cgroupRefused is why the plugin could not be started in its cgroup
	// (it was started outside it), or nil.
	cgroupRefused error
}

var _ runner.Runner = (*reapedRunner)(nil)

func newReapedRunner(r *reaper.Reaper, cmd *exec.Cmd) (*reapedRunner, error) {
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("stdout pipe: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("stderr pipe: %w", err)
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	return &reapedRunner{reaper: r, cmd: cmd, stdout: outR, stderr: errR, outW: outW, errW: errW, exited: make(chan struct{})}, nil
}

func (r *reapedRunner) Start(context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.killed {
		r.outW.Close()
		r.errW.Close()
		r.stdout.Close()
		r.stderr.Close()
		for _, f := range r.cmd.ExtraFiles {
			f.Close()
		}
		return fmt.Errorf("start %s: killed before it started", r.cmd.Path)
	}
	ch, err := r.reaper.Start(r.cmd)
	if err != nil && r.cmd.SysProcAttr != nil && r.cmd.SysProcAttr.UseCgroupFD {
		// A kernel without CLONE_INTO_CGROUP (before 5.7), or a group it
		// will not take: the plugin runs outside its group rather than
		// not at all (WIRE §9.5: cgroup trouble degrades).
		r.cgroupRefused = err
		r.cmd = withoutCgroup(r.cmd)
		ch, err = r.reaper.Start(r.cmd)
	}
	// The child has its copies; ours would keep the pipes open forever.
	r.outW.Close()
	r.errW.Close()
	for _, f := range r.cmd.ExtraFiles {
		f.Close()
	}
	if err != nil {
		r.stdout.Close()
		r.stderr.Close()
		return fmt.Errorf("start %s: %w", r.cmd.Path, err)
	}
	r.pid = r.cmd.Process.Pid
	go func() {
		r.exit = <-ch
		// Under mu: a Kill from another goroutine uses the Process.
		r.mu.Lock()
		r.reaped = true
		_ = r.cmd.Process.Release()
		r.mu.Unlock()
		close(r.exited)
	}()
	return nil
}

func (r *reapedRunner) Wait(ctx context.Context) error {
	select {
	case <-r.exited:
	case <-ctx.Done():
		return ctx.Err()
	}
	if r.exit.Status.Exited() && r.exit.Status.ExitStatus() == 0 {
		return nil
	}
	return fmt.Errorf("%s: %s", r.Name(), r.exit)
}

// Exited is closed once the process has been reaped.
func (r *reapedRunner) Exited() <-chan struct{} { return r.exited }

func (r *reapedRunner) Kill(context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.killed = true
	if r.cmd.Process == nil {
		return nil // not started; Start now refuses
	}
	if r.reaped {
		return nil
	}
	// Release only happens after the reap, so the pidfd still names our child.
	if err := r.cmd.Process.Kill(); err != nil && err != os.ErrProcessDone {
		return err
	}
	return nil
}

func (r *reapedRunner) Stdout() io.ReadCloser { return r.stdout }
func (r *reapedRunner) Stderr() io.ReadCloser { return r.stderr }
func (r *reapedRunner) Name() string          { return r.cmd.Path }

func (r *reapedRunner) ID() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pid == 0 {
		return ""
	}
	return fmt.Sprint(r.pid)
}

func (r *reapedRunner) Diagnose(context.Context) string {
	return "the plugin did not complete the go-plugin handshake: is it an envd plugin of this build?"
}

func (r *reapedRunner) PluginToHost(n, a string) (string, string, error) { return n, a, nil }
func (r *reapedRunner) HostToPlugin(n, a string) (string, string, error) { return n, a, nil }

// withoutCgroup is a fresh copy of an unstarted cmd (an exec.Cmd whose
// Start failed is not started again) that is spawned in the caller's cgroup.
func withoutCgroup(cmd *exec.Cmd) *exec.Cmd {
	c := exec.Command(cmd.Path)
	c.Args, c.Env, c.Dir = cmd.Args, cmd.Env, cmd.Dir
	c.Stdin, c.Stdout, c.Stderr = cmd.Stdin, cmd.Stdout, cmd.Stderr
	c.ExtraFiles = cmd.ExtraFiles
	attr := *cmd.SysProcAttr
	attr.UseCgroupFD, attr.CgroupFD = false, 0
	c.SysProcAttr = &attr
	return c
}
