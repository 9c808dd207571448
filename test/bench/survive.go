package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/gen/process/processconnect"
	"github.com/envd-project/envd/test/envdtest"
)

// counterStream follows a counter process (a line every 10 ms) on a Start
// stream held through envd-init.
type counterStream struct {
	mu      sync.Mutex
	text    strings.Builder
	changed chan struct{}
	end     *procpb.ProcessEvent_EndEvent
	err     error
	done    chan struct{}
}

func followCounter(ctx context.Context, cl processconnect.ProcessClient, stop string) *counterStream {
	c := &counterStream{changed: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		s, err := cl.Start(ctx, connect.NewRequest(&procpb.StartRequest{Process: &procpb.ProcessConfig{
			Cmd: "/bin/sh", Args: []string{"-c", fmt.Sprintf(`i=0; while [ ! -e %s ]; do echo $i; i=$((i+1)); sleep 0.01; done; exit 7`, stop)}}}))
		if err != nil {
			c.err = err
			return
		}
		defer s.Close()
		for s.Receive() {
			ev := s.Msg().GetEvent()
			c.mu.Lock()
			c.text.Write(ev.GetData().GetStdout())
			if e := ev.GetEnd(); e != nil {
				c.end = e
			}
			c.mu.Unlock()
			select {
			case c.changed <- struct{}{}:
			default:
			}
		}
		c.err = s.Err()
	}()
	return c
}

// numbers are the complete lines so far.
func (c *counterStream) numbers() []int {
	c.mu.Lock()
	lines := strings.Split(c.text.String(), "\n")
	c.mu.Unlock()
	var ns []int
	for _, l := range lines[:len(lines)-1] {
		n, _ := strconv.Atoi(l)
		ns = append(ns, n)
	}
	return ns
}

func (c *counterStream) last() int {
	ns := c.numbers()
	if len(ns) == 0 {
		return -1
	}
	return ns[len(ns)-1]
}

// waitPast waits until the counter went past n; it returns when that was.
func (c *counterStream) waitPast(n int) (time.Time, error) {
	timeout := time.After(20 * time.Second)
	for c.last() <= n {
		select {
		case <-c.changed:
		case <-c.done:
			return time.Time{}, fmt.Errorf("counter stream ended: %v", c.err)
		case <-timeout:
			return time.Time{}, fmt.Errorf("counter stuck at %d", c.last())
		}
	}
	return time.Now(), nil
}

// lost counts missing numbers and fails on a repeated or reordered one.
func lost(ns []int) (int, error) {
	missing := 0
	for i := 1; i < len(ns); i++ {
		if ns[i] <= ns[i-1] {
			return 0, fmt.Errorf("counter went from %d to %d", ns[i-1], ns[i])
		}
		missing += ns[i] - ns[i-1] - 1
	}
	return missing, nil
}

func pluginPids(e *envdtest.Envd, name string) []int {
	var out []int
	for _, pid := range envdtest.Children(e.Pid()) {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.TrimSpace(string(comm)) == name {
			out = append(out, pid)
		}
	}
	return out
}

// firstRPC waits for a List answered by an envd-proc other than old.
func firstRPC(ctx context.Context, e *envdtest.Envd, cl processconnect.ProcessClient, old int) (time.Time, error) {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		fresh := false
		for _, pid := range pluginPids(e, "envd-proc") {
			fresh = fresh || pid != old
		}
		if fresh {
			if _, err := cl.List(ctx, connect.NewRequest(&procpb.ListRequest{})); err == nil {
				return time.Now(), nil
			}
		}
		time.Sleep(200 * time.Microsecond)
	}
	return time.Time{}, fmt.Errorf("no RPC on a new envd-proc")
}

// benchSurvive measures issue 9's figures: a kill -9 of envd-proc and a
// hot-swap of it under a counter process with a stream attached.
func benchSurvive() error {
	const crashes = 5
	dir, err := os.MkdirTemp("", "envd-bench-swap-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	src, err := envdtest.Bundle()
	if err != nil {
		return err
	}
	exe, err := os.ReadFile(filepath.Join(src, "envd-init"))
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "envd-init"), exe, 0o755); err != nil {
		return err
	}
	for _, p := range []string{"envd-proc", "envd-fs", "envd-net"} {
		if err := os.Link(filepath.Join(dir, "envd-init"), filepath.Join(dir, p)); err != nil {
			return err
		}
	}
	e, err := envdtest.StartFromE(dir)
	if err != nil {
		return err
	}
	defer e.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cl := processconnect.NewProcessClient(http.DefaultClient, e.URL)
	stop := filepath.Join(dir, "stop")
	c := followCounter(ctx, cl, stop)
	if _, err := c.waitPast(10); err != nil {
		return err
	}
	var toRPC, toByte []time.Duration
	for i := 0; i < crashes; i++ {
		old := pluginPids(e, "envd-proc")[0]
		before := c.last()
		t0 := time.Now()
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			return err
		}
		rpc, err := firstRPC(ctx, e, cl, old)
		if err != nil {
			return err
		}
		// The first line the dead plugin cannot have read: written after the crash.
		b, err := c.waitPast(before + 1)
		if err != nil {
			return err
		}
		toRPC, toByte = append(toRPC, rpc.Sub(t0)), append(toByte, b.Sub(t0))
		if _, err := c.waitPast(c.last() + 5); err != nil {
			return err
		}
	}
	crashLost, err := lost(c.numbers())
	if err != nil {
		return err
	}
	add("kill -9 envd-proc -> first RPC on the new one (p50)", median(toRPC).Round(time.Millisecond).String(), "", nil)
	add("kill -9 envd-proc -> stream moving again (p50)", median(toByte).Round(time.Millisecond).String(), "", nil)
	add(fmt.Sprintf("  counter lines lost in %d crashes", crashes), strconv.Itoa(crashLost), "<= 20 (README bound)", check(crashLost <= 20))

	// Hot-swap: a new file renamed over envd-proc, as make swap-envd-proc does.
	old := pluginPids(e, "envd-proc")[0]
	tmp := filepath.Join(dir, "envd-proc.new")
	if err := os.WriteFile(tmp, exe, 0o755); err != nil {
		return err
	}
	t0 := time.Now()
	if err := os.Rename(tmp, filepath.Join(dir, "envd-proc")); err != nil {
		return err
	}
	rpc, err := firstRPC(ctx, e, cl, old)
	if err != nil {
		return err
	}
	if _, err := c.waitPast(c.last() + 20); err != nil {
		return err
	}
	if err := os.WriteFile(stop, nil, 0o644); err != nil {
		return err
	}
	<-c.done
	if c.end.GetExitCode() != 7 {
		return fmt.Errorf("counter ended with %v (%v)", c.end, c.err)
	}
	total, err := lost(c.numbers())
	if err != nil {
		return err
	}
	swapLost := total - crashLost
	add("hot-swap: file replaced -> first RPC on the new envd-proc", rpc.Sub(t0).Round(time.Millisecond).String(), "", nil)
	add("  counter lines lost in the swap", strconv.Itoa(swapLost), "0", check(swapLost == 0))
	return nil
}
