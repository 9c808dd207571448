package cgroups

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"go.uber.org/zap"
)

// testRoot makes a unique sub-root on a real cgroup2 hierarchy and removes
// it (and the groups under it) afterwards.
func testRoot(t *testing.T) string {
	t.Helper()
	candidates := []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"}
	if env := os.Getenv("ENVD_TEST_CGROUP2"); env != "" {
		candidates = []string{env}
	}
	var base string
	for _, c := range candidates {
		if ok, err := IsCgroup2(c); err == nil && ok {
			base = c
			break
		}
	}
	if base == "" {
		t.Skipf("no cgroup2 hierarchy at %v: cannot test placement", candidates)
	}
	root := filepath.Join(base, fmt.Sprintf("envd-test-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Skipf("cannot create a test cgroup under %s: %v", base, err)
	}
	t.Cleanup(func() {
		for _, name := range []string{"ptys", "user", "socats", ""} {
			dir := filepath.Join(root, name)
			// A cgroup whose last process was just reaped can stay busy
			// for a moment.
			for i := 0; i < 50; i++ {
				err := os.Remove(dir)
				if err == nil || errors.Is(err, fs.ErrNotExist) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		if _, err := os.Stat(root); err == nil {
			t.Errorf("test cgroup %s left behind", root)
		}
	})
	return root
}

// cgroupOf returns pid's cgroup2 path from /proc/PID/cgroup.
func cgroupOf(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return rest
		}
	}
	t.Fatalf("no cgroup2 line in %q", b)
	return ""
}

// relPath is dir as seen in /proc/PID/cgroup (relative to the mount).
func relPath(t *testing.T, dir string) string {
	t.Helper()
	for _, base := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup", os.Getenv("ENVD_TEST_CGROUP2")} {
		if base != "" && strings.HasPrefix(dir, base+"/") {
			return strings.TrimPrefix(dir, base)
		}
	}
	t.Fatalf("cannot relate %s to a mount", dir)
	return ""
}

func TestPlacement(t *testing.T) {
	root := testRoot(t)
	m, err := New(root, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	v2 := m.(*V2)
	if _, ok := m.FD(System); ok {
		t.Fatal("System must not have a group")
	}
	for _, kind := range []Kind{User, Forwarder} {
		fd, ok := m.FD(kind)
		if !ok {
			t.Fatalf("no fd for %v", kind)
		}
		cmd := exec.Command("sleep", "30")
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start in %s: %v", GroupName(kind), err)
		}
		got := cgroupOf(t, cmd.Process.Pid)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if want := relPath(t, v2.Path(kind)); got != want {
			t.Errorf("%s: process in %q, want %q", GroupName(kind), got, want)
		}
	}

	// A PTY session: setsid + controlling terminal + clone into the group.
	fd, _ := m.FD(PTY)
	cmd := exec.Command("sleep", "30")
	f, err := pty.StartWithAttrs(cmd, nil, &syscall.SysProcAttr{
		Setsid: true, Setctty: true, UseCgroupFD: true, CgroupFD: fd,
	})
	if err != nil {
		t.Fatalf("pty start: %v", err)
	}
	got := cgroupOf(t, cmd.Process.Pid)
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	f.Close()
	if want := relPath(t, v2.Path(PTY)); got != want {
		t.Errorf("pty: process in %q, want %q", got, want)
	}

	// A second New over existing groups (envd-init restart) and Open (a
	// plugin) both work.
	m2, err := New(root, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	m2.Close()
	m3, err := Open(root, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if err := m3.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := m3.FD(User); ok {
		t.Fatal("fd still handed out after Close")
	}
}

func TestSetupFallback(t *testing.T) {
	dir := t.TempDir()
	if _, err := New(dir, zap.NewNop()); err == nil {
		t.Fatal("New on a non-cgroup2 dir must fail")
	}
	if _, err := Open(filepath.Join(dir, "missing"), zap.NewNop()); err == nil {
		t.Fatal("Open on a missing dir must fail")
	}
	if _, ok := Setup(dir, true, zap.NewNop()).(Noop); !ok {
		t.Fatal("Setup on a non-cgroup2 dir must give Noop")
	}
	if _, ok := Setup(dir, false, zap.NewNop()).(Noop); !ok {
		t.Fatal("disabled Setup must give Noop")
	}
	if fd, ok := (Noop{}).FD(User); ok || fd != -1 {
		t.Fatal("Noop handed out an fd")
	}
}

func TestProperties(t *testing.T) {
	const m = 900 * mib
	get := func(kind Kind) map[string]string {
		out := map[string]string{}
		for _, p := range properties(kind, m) {
			out[p.file] = p.value
		}
		return out
	}
	pty, user, fwd := get(PTY), get(User), get(Forwarder)
	want := fmt.Sprint(m)
	if pty["cpu.weight"] != "200" || pty["io.weight"] != "default 50" || pty["memory.max"] != want || pty["memory.high"] != want {
		t.Errorf("ptys: %v", pty)
	}
	if user["cpu.weight"] != "50" || user["io.weight"] != "default 10" || user["memory.max"] != want {
		t.Errorf("user: %v", user)
	}
	if fwd["cpu.weight"] != "150" || fwd["memory.min"] != "5242880" || fwd["memory.low"] != "8388608" {
		t.Errorf("socats: %v", fwd)
	}
	if _, ok := get(System)["cpu.weight"]; ok {
		t.Error("System has properties")
	}
	if len(properties(User, 0)) != 2 {
		t.Error("memory limits without a MemTotal")
	}
}
