package supervisor

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/envd-project/envd/envdinit/reaper"
	"github.com/envd-project/envd/envdinit/state"
	controlpb "github.com/envd-project/envd/gen/control"
)

// The fds a replaced plugin handed over (envd-fs's inotify instances) are
// held by the supervisor until the replacement takes them. A stop while
// the replacement is still in its handshake must let them go: here the
// carried fd is a pipe's read end, so once no copy is left a write to the
// pipe fails with EPIPE.
func TestStopDuringHandshakeReleasesCarriedFDs(t *testing.T) {
	if err := reaper.MakeSubreaper(); err != nil {
		t.Fatal(err)
	}
	rp := reaper.New(zap.NewNop())
	defer rp.Close()
	dir := t.TempDir()
	started := filepath.Join(dir, "started")
	// A replacement stuck before its handshake, holding what it inherited.
	plugin := filepath.Join(dir, "plugin")
	if err := os.WriteFile(plugin, []byte("#!/bin/sh\n: > "+started+"\nexec sleep 1000\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	s := New(zap.NewNop(), rp, state.New(&controlpb.Config{}),
		[]Spec{{Name: "fs", Path: plugin, CgroupFD: -1, Carry: true}}, Options{StartTimeout: time.Minute, SocketDir: dir})
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	// What a handover left for the replacement.
	s.plugins["fs"].carried = &carried{state: []byte("x"), files: []*os.File{r}}
	s.Start()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(started); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the plugin never started")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s.Stop(ctx)
	// The plugin's copy goes when it is reaped; the stop does not wait for that.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		_, err := w.Write([]byte{0})
		if errors.Is(err, syscall.EPIPE) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("a copy of the carried fd outlived the stop")
		}
	}
}
