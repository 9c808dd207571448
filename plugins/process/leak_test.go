package process

import (
	"context"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/internal/users"
)

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	must(t, err)
	return len(ents)
}

// Every fd and goroutine of a process goes away with it: run a mix of
// processes, streams and errors, then compare with the baseline. Not
// parallel, so that other tests' fds and goroutines do not interfere.
func TestNoLeaks(t *testing.T) {
	s := New(nil, nil, users.Default, nil)
	s.retain = 50 * time.Millisecond
	// Warm up lazily created runtime fds (epoll, pidfd probes, /dev/null).
	startStream(t, s, context.Background(), cmdReq("/bin/true")).wait(t)
	startStream(t, s, context.Background(), ptyReq("/bin/true", 80, 24)).wait(t)
	time.Sleep(100 * time.Millisecond)
	fds, goroutines := openFDs(t), runtime.NumGoroutine()

	for i := 0; i < 5; i++ {
		startStream(t, s, context.Background(), shReq("echo x; exit 3")).wait(t)
		pty := startStream(t, s, context.Background(), ptyReq("/bin/cat", 80, 24))
		pid := pty.waitPID(t)
		sendPTY(t, s, pid, "abc\n\x04")
		pty.wait(t)
		cat := startStream(t, s, context.Background(), cmdReq("/bin/cat"))
		pid = cat.waitPID(t)
		c := connectStream(t, s, context.Background(), pidSel(pid))
		c.waitPID(t)
		c.cancel()
		must(t, sendStdin(s, pidSel(pid), "data"))
		_, err := s.CloseStdin(context.Background(), &procpb.CloseStdinRequest{Process: pidSel(pid)})
		must(t, err)
		cat.wait(t)
		req := cmdReq("/bin/true")
		req.Process.Cwd = ptr("/missing")
		_ = s.Start(context.Background(), req, func(*procpb.StartResponse) error { return nil })
		killed := startStream(t, s, context.Background(), shReq("sleep 30 & wait"))
		pid = killed.waitPID(t)
		_, err = s.SendSignal(context.Background(), &procpb.SendSignalRequest{Process: pidSel(pid), Signal: procpb.Signal_SIGNAL_SIGKILL})
		must(t, err)
		killed.wait(t)
	}
	// One left running for Shutdown to kill.
	startStream(t, s, context.Background(), shReq("sleep 30")).waitPID(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	must(t, s.Shutdown(ctx))

	eventually(t, "fds back to baseline", func() bool { return openFDs(t) <= fds })
	eventually(t, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= goroutines })
	if z := zombieChildren(); len(z) > 0 {
		t.Errorf("zombie children left: %v", z)
	}
}

// zombieChildren lists this process's children that exited unreaped.
func zombieChildren() []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[0] == "Z" && f[1] == strconv.Itoa(os.Getpid()) {
			out = append(out, pid)
		}
	}
	return out
}
