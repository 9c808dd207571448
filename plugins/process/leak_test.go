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

// A process that ended is kept for Connect for 30 s (WIRE §5.2) as a slim
// record: a burst of short commands must not hold each one's config,
// exec.Cmd, environment, files and logger for the whole retention. Not
// parallel: it compares heap sizes.
func TestRetainedRecordIsSlim(t *testing.T) {
	s := New(nil, nil, users.Default, nil)
	s.retain = time.Hour
	defer s.Shutdown(context.Background())
	env := map[string]string{}
	for i := range 20 {
		env["VAR_"+strconv.Itoa(i)] = strings.Repeat("v", 100)
	}
	// s.Start itself, not the stream helpers: they keep per-stream state
	// until the test ends.
	run := func(n int) {
		for range n {
			req := cmdReq("/bin/true")
			req.Process.Envs = env
			must(t, s.Start(context.Background(), req, func(*procpb.StartResponse) error { return nil }))
		}
	}
	run(5) // warm-up: pools, lazily made runtime state
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	const n = 100
	before := heap()
	run(n)
	// The lifecycle slims the record right after the end reaches the
	// stream: wait for all n to be slim.
	eventually(t, "every record slimmed", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		slim := 0
		for _, p := range s.retained {
			if p.config == nil && p.child == nil {
				slim++
			}
		}
		return slim >= n
	})
	per := (int64(heap()) - int64(before)) / n
	s.mu.Lock()
	kept := len(s.retained)
	s.mu.Unlock()
	if kept < n {
		t.Fatalf("%d records retained, want ≥ %d", kept, n)
	}
	// A full record with this environment costs ~8 KiB; the slim one
	// (pid, tag, seq, end event, timer) under 1 KiB.
	if per > 1024 {
		t.Errorf("each retained process holds %d bytes of heap, want ≤ 1024", per)
	}
	t.Logf("%d bytes of heap per retained process", per)
}
