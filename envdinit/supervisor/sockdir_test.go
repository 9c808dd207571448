package supervisor

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
)

// deadSocket leaves a socket file nobody listens on, as a SIGKILLed
// plugin does.
func deadSocket(t *testing.T, path string) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
}

func liveSocket(t *testing.T, path string) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
}

func mkdir(t *testing.T, path string) string {
	t.Helper()
	if err := os.MkdirAll(path, 0o700); err != nil {
		t.Fatal(err)
	}
	return path
}

// At start-up the supervisor removes what dead plugins left in its socket
// directory, and nothing a live plugin (of this or another envd-init)
// still uses, nor what it did not make.
func TestRemoveStaleSocketDirs(t *testing.T) {
	dir := t.TempDir()
	// A supervised plugin's directory after a SIGKILLed envd-init.
	deadDir := mkdir(t, filepath.Join(dir, "plugin-dir111"))
	deadSocket(t, filepath.Join(deadDir, "plugin222"))
	deadHTTP := mkdir(t, filepath.Join(deadDir, "envd-fs-http-333"))
	deadSocket(t, filepath.Join(deadHTTP, "http.sock"))
	deadSocket(t, filepath.Join(deadHTTP, "handoff.sock"))
	// A hand-started plugin that was SIGKILLed.
	deadSocket(t, filepath.Join(dir, "plugin444"))
	handHTTP := mkdir(t, filepath.Join(dir, "envd-fs-http-555"))
	deadSocket(t, filepath.Join(handHTTP, "http.sock"))
	// A live plugin of another envd-init: its HTTP socket still listens.
	liveDir := mkdir(t, filepath.Join(dir, "plugin-dir666"))
	deadSocket(t, filepath.Join(liveDir, "plugin777"))
	liveHTTP := mkdir(t, filepath.Join(liveDir, "envd-fs-http-888"))
	liveSocket(t, filepath.Join(liveHTTP, "http.sock"))
	liveHand := filepath.Join(dir, "plugin999")
	liveSocket(t, liveHand)
	// Not ours.
	other := mkdir(t, filepath.Join(dir, "something-else"))
	old := time.Now().Add(-time.Hour)
	for _, p := range []string{deadDir, filepath.Join(dir, "plugin444"), handHTTP, liveDir, liveHand, other} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	// A plugin being started right now: no socket yet, but young.
	young := mkdir(t, filepath.Join(dir, "plugin-dir000"))

	removeStale(zap.NewNop(), dir, time.Now())

	for _, p := range []string{deadDir, filepath.Join(dir, "plugin444"), handHTTP} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s: stale, still there (%v)", filepath.Base(p), err)
		}
	}
	for _, p := range []string{liveDir, liveHTTP, liveHand, other, young} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s: removed: %v", filepath.Base(p), err)
		}
	}
}
