package carry

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// A plugin that announced fds and died before sending them all: Recv
// learns it from the socket at once instead of polling a dead socket (in
// envd-init, PID 1) until its deadline.
func TestRecvReturnsWhenTheSenderDies(t *testing.T) {
	ours, theirs, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	// The plugin: it holds its end, sends one of the fds it announced, dies.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	fds, err := syscallFDs(theirs, r)
	if err != nil {
		t.Fatal(err)
	}
	if err := Send(theirs, fds[1:]); err != nil {
		t.Fatal(err)
	}
	plugin := exec.Command("/bin/sh", "-c", "exit 0")
	plugin.ExtraFiles = []*os.File{theirs}
	if err := plugin.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	if err := plugin.Wait(); err != nil {
		t.Fatal(err)
	}

	const wait = 20 * time.Second
	start := time.Now()
	var before, after syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	files, err := Recv(ours, 3, wait)
	took := time.Since(start)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	for _, f := range files {
		f.Close()
	}
	cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
	t.Logf("Recv returned in %v, %v of CPU: %v", took, cpu, err)
	if err == nil {
		t.Fatal("Recv got 3 fds from a sender that sent 1")
	}
	if !errors.Is(err, errPeerGone) {
		t.Fatalf("Recv: %v; want it to say the sender is gone", err)
	}
	if took > wait/2 {
		t.Fatalf("Recv took %v of its %v to notice the sender was gone", took, wait)
	}
}

// A live sender that is slow: Recv waits for the rest.
func TestRecvWaitsForALiveSender(t *testing.T) {
	ours, theirs, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	defer theirs.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	fds, err := syscallFDs(r, w)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		if err := Send(theirs, fds); err != nil {
			t.Error(err)
		}
	}()
	files, err := Recv(ours, 2, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		f.Close()
	}
}

func syscallFDs(files ...*os.File) ([]int, error) {
	var out []int
	for _, f := range files {
		rc, err := f.SyscallConn()
		if err != nil {
			return nil, err
		}
		if err := rc.Control(func(fd uintptr) { out = append(out, int(fd)) }); err != nil {
			return nil, err
		}
	}
	return out, nil
}
