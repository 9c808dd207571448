package vault

import (
	"encoding/json"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/envd-project/envd/envdinit/reaper"
	"github.com/envd-project/envd/plugins/pluginkit/fdvault"
)

// A take-over envd-proc that stops reading in the middle of its fetch
// (SIGSTOP, a frozen cgroup) must not stall envd-init's reaper: orphans
// that exit meanwhile are still reaped and their statuses kept, and once
// the plugin reads again it gets every record before any exit of it.
func TestStuckFetchDoesNotStallTheReaper(t *testing.T) {
	if err := reaper.MakeSubreaper(); err != nil {
		t.Fatal(err)
	}
	rp := reaper.New(zap.NewNop())
	defer rp.Close()
	v := New(zap.NewNop())
	defer v.Close()
	rp.OnOrphan(v.Reaped)
	dep := client(t, v)

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	// Records enough to fill the socket many times over (the configs are
	// large), so the fetch cannot be sent in one go.
	big := make([]byte, 32<<10) // base64 in the JSON: under MaxMessage
	const fillers = 40
	for i := 0; i < fillers; i++ {
		self, err := unix.PidfdOpen(os.Getpid(), 0)
		if err != nil {
			t.Skipf("no pidfd: %v", err)
		}
		pidfd := os.NewFile(uintptr(self), "pidfd")
		// Pids above any pid_max: no process of this test has them.
		if err := dep.Deposit(&fdvault.Record{Pid: uint32(1<<23 + i), Config: big}, []*os.File{pidfd, r, r}); err != nil {
			t.Fatal(err)
		}
		pidfd.Close()
	}
	// The user processes: each ends when its stdin closes.
	const users = 3
	var pids []int
	var stdins []*os.File
	for i := 0; i < users; i++ {
		in, inW, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("/bin/sh", "-c", "read x; exit 5")
		cmd.Stdin = in
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		in.Close()
		stdins = append(stdins, inW)
		pid := cmd.Process.Pid
		pids = append(pids, pid)
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			t.Fatal(err)
		}
		pidfd := os.NewFile(uintptr(fd), "pidfd")
		if err := dep.Deposit(&fdvault.Record{Pid: uint32(pid), Seq: uint64(i + 1)}, []*os.File{pidfd, r, r}); err != nil {
			t.Fatal(err)
		}
		pidfd.Close()
	}
	defer func() {
		for _, f := range stdins {
			f.Close()
		}
	}()
	if err := dep.Sync(); err != nil {
		t.Fatal(err)
	}

	// The take-over plugin asks for everything and then reads nothing.
	theirs, err := v.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer theirs.Close()
	stuck, err := fdvault.NewConn(theirs)
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	if err := stuck.Send(&fdvault.Msg{Op: fdvault.OpFetch, ID: 1}, nil); err != nil {
		t.Fatal(err)
	}
	// The fetch has begun once its first record waits in the socket.
	raw, err := theirs.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; {
		var n int
		var ierr error
		if err := raw.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); err != nil {
			t.Fatal(err)
		}
		if ierr != nil {
			t.Fatal(ierr)
		}
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the fetch sent nothing")
		}
		time.Sleep(time.Millisecond)
	}

	// The user processes end; the reaper must take every one.
	before := rp.Orphans()
	for _, f := range stdins {
		f.Close()
	}
	reaped := make(chan struct{})
	go func() {
		defer close(reaped)
		for rp.Orphans() < before+users {
			time.Sleep(time.Millisecond)
		}
		// And it still serves envd-init's own commands.
		if err := rp.Run(exec.Command("/bin/true")); err != nil {
			t.Error(err)
		}
	}()
	select {
	case <-reaped:
	case <-time.After(30 * time.Second):
		// Unblock the vault so the test can end.
		stuck.Close()
		t.Fatalf("the reaper stalled behind a plugin that stopped reading: %d of %d orphans reaped", rp.Orphans()-before, users)
	}

	// The plugin reads again: every record, the ack, then the exits.
	seen := map[uint32]bool{}
	exits := map[uint32]int32{}
	acked := false
	for len(exits) < users {
		m, files, err := stuck.Recv()
		if err != nil {
			t.Fatalf("after %d records and %d exits: %v", len(seen), len(exits), err)
		}
		for _, f := range files {
			f.Close()
		}
		switch m.Op {
		case fdvault.OpRecord:
			if acked {
				t.Fatalf("record %d after the fetch's ack", m.Pid)
			}
			if m.Pid >= 1<<23 && len(m.Rec.Config) != len(big) {
				t.Fatalf("a filler record came with a %d-byte config: the socket never filled", len(m.Rec.Config))
			}
			seen[m.Pid] = true
		case fdvault.OpAck:
			acked = true
			if len(seen) != fillers+users {
				t.Fatalf("ack after %d of %d records", len(seen), fillers+users)
			}
		case fdvault.OpExit:
			if !seen[m.Pid] {
				b, _ := json.Marshal(m)
				t.Fatalf("exit before its record: %s", b)
			}
			exits[m.Pid] = m.Status
		}
	}
	for _, pid := range pids {
		st, ok := exits[uint32(pid)]
		if !ok || syscall.WaitStatus(st).ExitStatus() != 5 {
			t.Errorf("pid %d: exit %v (%v)", pid, syscall.WaitStatus(st).ExitStatus(), ok)
		}
	}
}
