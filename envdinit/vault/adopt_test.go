package vault

import (
	"context"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/envd-project/envd/plugins/pluginkit/fdvault"
	"github.com/envd-project/envd/plugins/process"
)

// A process the next envd-proc cannot adopt (here: its record's config is
// corrupt) is out of every client's reach: envd-proc ends it and the vault
// lets go of its fds, instead of holding a reader that never reads.
func TestFailedAdoptionEndsAndForgetsTheProcess(t *testing.T) {
	v := New(zap.NewNop())
	defer v.Close()
	dep := client(t, v)

	cmd := exec.Command("/bin/sh", "-c", "sleep 100 & wait")
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	// As envd-proc starts them: the leader of its own group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	outW.Close()
	errW.Close()
	pid := cmd.Process.Pid
	defer unix.Kill(-pid, syscall.SIGKILL)
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Skipf("no pidfd: %v", err)
	}
	pidfd := os.NewFile(uintptr(fd), "pidfd")
	rec := &fdvault.Record{Pid: uint32(pid), Seq: 7, Config: []byte{0xff, 0xff}}
	if err := dep.Deposit(rec, []*os.File{pidfd, outR, errR}); err != nil {
		t.Fatal(err)
	}
	pidfd.Close()
	outR.Close()
	errR.Close()
	if err := dep.Sync(); err != nil {
		t.Fatal(err)
	}
	if v.Len() != 1 {
		t.Fatalf("%d records deposited", v.Len())
	}

	svc := process.New(zap.NewNop(), nil, nil, nil)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = svc.Shutdown(ctx)
	}()
	next := client(t, v)
	if err := svc.Adopt(next); err != nil {
		t.Fatal(err)
	}
	if err := next.Sync(); err != nil {
		t.Fatal(err)
	}
	if v.Len() != 0 {
		t.Errorf("the vault still keeps the process nobody adopted (%d records)", v.Len())
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case <-waited:
		if st := cmd.ProcessState.Sys().(syscall.WaitStatus); !st.Signaled() || st.Signal() != syscall.SIGKILL {
			t.Errorf("the process ended with %v, want SIGKILL", cmd.ProcessState)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the process nobody adopted is still running")
	}
	// Its whole group went (a killed member is a zombie until its new
	// parent reaps it: init, or this test when an earlier test made it a
	// subreaper).
	for deadline := time.Now().Add(20 * time.Second); unix.Kill(-pid, 0) == nil; time.Sleep(5 * time.Millisecond) {
		_, _ = unix.Wait4(-pid, nil, unix.WNOHANG, nil)
		if time.Now().After(deadline) {
			t.Fatal("the process's group outlived it")
		}
	}
}
