package reaper

import (
	"context"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
)

func TestOwnedExitsAreNeverStolen(t *testing.T) {
	if err := MakeSubreaper(); err != nil {
		t.Fatal(err)
	}
	r := New(zap.NewNop())
	defer r.Close()
	// Orphans keep arriving (each sh leaves a background sleep behind)
	// while owned children exit with distinct codes.
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			orphan := exec.Command("/bin/sh", "-c", "sleep 0.05 & exit 0")
			if err := r.Run(orphan); err != nil {
				t.Errorf("orphan maker: %v", err)
			}
			cmd := exec.Command("/bin/sh", "-c", "exit 7")
			err := r.Run(cmd)
			if err == nil || !strings.Contains(err.Error(), "exit status 7") {
				t.Errorf("owned child: %v, want exit status 7", err)
			}
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for r.Orphans() < 20 {
		if time.Now().After(deadline) {
			t.Fatalf("reaped %d orphans, want 20", r.Orphans())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSignalExit(t *testing.T) {
	r := New(zap.NewNop())
	defer r.Close()
	cmd := exec.Command("/bin/sh", "-c", "kill -9 $$")
	ch, err := r.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case exit := <-ch:
		if exit.String() != "signal: killed" {
			t.Fatalf("exit %s", exit)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no exit")
	}
}

// Output runs a command next to the reap loop without losing its status
// (os/exec's own wait would race wait4(-1) and fail with ECHILD).
func TestOutputUnderTheReaper(t *testing.T) {
	r := New(zap.NewNop())
	defer r.Close()
	for i := 0; i < 50; i++ {
		out, err := r.Output(context.Background(), "/bin/sh", "-c", "echo hi; echo err >&2")
		if err != nil || string(out) != "hi\nerr\n" {
			t.Fatalf("run %d: %q %v", i, out, err)
		}
	}
	if _, err := r.Output(context.Background(), "/bin/sh", "-c", "exit 3"); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("exit 3: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	if _, err := r.Output(ctx, "/bin/sleep", "30"); err == nil || time.Since(t0) > 5*time.Second {
		t.Fatalf("timeout: %v after %v", err, time.Since(t0))
	}
}

// ctx ends a command's children too, and a child left holding the output
// pipe does not hold the caller: /init's 10 s mount budget must hold even
// when mount's own helper hangs.
func TestOutputContextEndsTheWholeCommand(t *testing.T) {
	if err := MakeSubreaper(); err != nil {
		t.Fatal(err)
	}
	r := New(zap.NewNop())
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err := r.Output(ctx, "/bin/sh", "-c", "sleep 30; echo never")
	if err == nil || !strings.Contains(err.Error(), "deadline exceeded") {
		t.Fatalf("err %v", err)
	}
	if d := time.Since(t0); d > 10*time.Second {
		t.Fatalf("Output returned after %v: the child kept it", d)
	}
	// A daemon that outlives a successful command.
	t0 = time.Now()
	out, err := r.Output(context.Background(), "/bin/sh", "-c", "echo hi; sleep 30 &")
	if err != nil || string(out) != "hi\n" {
		t.Fatalf("daemonising command: %q %v", out, err)
	}
	if d := time.Since(t0); d > 10*time.Second {
		t.Fatalf("Output returned after %v: the daemon kept it", d)
	}
}
