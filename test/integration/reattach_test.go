package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/gen/filesystem/filesystemconnect"
	"github.com/envd-project/envd/test/envdtest"
)

// handStarted is a plugin started by hand with --debug-server, as a
// developer would under a debugger.
type handStarted struct {
	cmd  *exec.Cmd
	out  *envdtest.LockedBuffer
	done chan struct{}
}

// startByHand runs the bundle's envd-fs with --debug-server and waits until
// it has written its reattach info to file.
func startByHand(t *testing.T, file string) *handStarted {
	t.Helper()
	dir, err := envdtest.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(file)
	h := &handStarted{out: &envdtest.LockedBuffer{}, done: make(chan struct{})}
	h.cmd = exec.Command(filepath.Join(dir, "envd-fs"), "--debug-server", "--reattach-file", file, "--no-cgroups")
	// Only stdout is read here: the log on stderr would race with it.
	h.cmd.Stdout = h.out
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = h.cmd.Wait(); close(h.done) }()
	t.Cleanup(func() { h.stop(t) })
	deadline := time.Now().Add(20 * time.Second)
	for {
		if b, err := os.ReadFile(file); err == nil && bytes.HasSuffix(b, []byte("\n")) {
			return h
		}
		select {
		case <-h.done:
			t.Fatalf("envd-fs --debug-server exited: %v", h.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("envd-fs --debug-server wrote no reattach file in 20s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop ends the hand-started plugin with SIGTERM (as ^C would) and checks
// that it exits 0.
func (h *handStarted) stop(t *testing.T) {
	select {
	case <-h.done:
		return
	default:
	}
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.done:
		if !h.cmd.ProcessState.Success() {
			t.Errorf("hand-started envd-fs: %v", h.cmd.ProcessState)
		}
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
		<-h.done
		t.Error("hand-started envd-fs ignored SIGTERM for 10s")
	}
}

// servedBy stats /proc/self through envd-init: the link names the pid of
// the process that served the call.
func servedBy(t *testing.T, cl filesystemconnect.FilesystemClient, within time.Duration) (string, error) {
	t.Helper()
	ctx := envdtest.Ctx(t, within)
	res, err := cl.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: "/proc/self"}))
	if err != nil {
		return "", err
	}
	return res.Msg.GetEntry().GetSymlinkTarget(), nil
}

// TestReattachHandStartedPlugin is "debugging one plugin" (README): envd-fs
// started by hand with --debug-server, envd-init started with --reattach
// pointing at its file; calls through envd-init are served by the
// hand-started process, and a plugin restarted by hand is found again.
func TestReattachHandStartedPlugin(t *testing.T) {
	file := filepath.Join(t.TempDir(), "envd-fs.json")
	h := startByHand(t, file)
	if !strings.Contains(h.out.String(), "--reattach envd-fs="+file) {
		t.Errorf("the plugin does not say how to attach: %q", h.out.String())
	}
	e := envdtest.Start(t, "--reattach", "envd-fs="+file)
	if pid := e.PluginPid("envd-fs"); pid != 0 {
		t.Fatalf("envd-init started its own envd-fs (pid %d)", pid)
	}
	cl := filesystemconnect.NewFilesystemClient(envdtest.Protocols()[0].Client, e.URL, envdtest.Protocols()[0].Options...)
	got, err := servedBy(t, cl, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("/proc/%d", h.cmd.Process.Pid); got != want {
		t.Fatalf("Stat /proc/self through envd-init: served by %s, want the hand-started %s", got, want)
	}

	// The developer stops the plugin and starts it again (a new build, a
	// new debugger session): envd-init notices the end, rereads the file
	// and attaches to the new process.
	h.stop(t)
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Errorf("the stopped plugin left its reattach file: %v", err)
	}
	h2 := startByHand(t, file)
	want := fmt.Sprintf("/proc/%d", h2.cmd.Process.Pid)
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := servedBy(t, cl, 10*time.Second)
		if err == nil && got == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the restart by hand: served by %q (%v), want %s", got, err, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if pid := e.PluginPid("envd-fs"); pid != 0 {
		t.Fatalf("envd-init started its own envd-fs (pid %d)", pid)
	}
	// envd-init's other plugins are its own children, as always.
	if e.PluginPid("envd-proc") == 0 {
		t.Fatal("envd-proc is not a child of envd-init")
	}

	// Stopping envd-init only detaches: the plugin keeps running, and the
	// next envd-init attaches to the same process.
	if err := e.Stop(); err != nil {
		t.Fatalf("envd-init exit: %v", err)
	}
	select {
	case <-h2.done:
		t.Fatalf("the hand-started plugin ended with envd-init: %v", h2.cmd.ProcessState)
	default:
	}
	e2 := envdtest.Start(t, "--reattach", "envd-fs="+file)
	cl2 := filesystemconnect.NewFilesystemClient(envdtest.Protocols()[0].Client, e2.URL, envdtest.Protocols()[0].Options...)
	if got, err := servedBy(t, cl2, 20*time.Second); err != nil || got != want {
		t.Fatalf("through the next envd-init: served by %q (%v), want %s", got, err, want)
	}
}
