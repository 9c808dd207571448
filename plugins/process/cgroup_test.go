package process

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/internal/cgroups"
	"github.com/envd-project/envd/internal/users"
)

// fdManager hands out fixed fds per kind and records what was asked.
type fdManager struct {
	mu    sync.Mutex
	fds   map[cgroups.Kind]int
	asked []cgroups.Kind
}

func (m *fdManager) FD(k cgroups.Kind) (int, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.asked = append(m.asked, k)
	fd, ok := m.fds[k]
	return fd, ok
}

func (m *fdManager) Close() error { return nil }

func (m *fdManager) last() cgroups.Kind {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.asked[len(m.asked)-1]
}

func TestCgroupKind(t *testing.T) {
	t.Parallel()
	m := &fdManager{}
	s := newServiceWith(t, nil, users.Default, m)
	cases := []struct {
		req  *procpb.StartRequest
		want cgroups.Kind
	}{
		{cmdReq("/bin/true"), cgroups.User},
		{ptyReq("/bin/true", 80, 24), cgroups.PTY},
		{func() *procpb.StartRequest { r := cmdReq("/bin/true"); r.Tag = ptr("other"); return r }(), cgroups.User},
		{func() *procpb.StartRequest { r := cmdReq("/bin/true"); r.Tag = ptr(SystemTag); return r }(), cgroups.System},
		{func() *procpb.StartRequest { r := ptyReq("/bin/true", 80, 24); r.Tag = ptr(SystemTag); return r }(), cgroups.System},
	}
	for i, c := range cases {
		st := startStream(t, s, context.Background(), c.req).wait(t)
		if st.err != nil {
			t.Fatal(st.err)
		}
		if got := m.last(); got != c.want {
			t.Errorf("case %d: kind %v, want %v", i, got, c.want)
		}
	}
}

// cgroup2Mount finds a writable cgroup2 mount, or "".
func cgroup2Mount() string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" {
				return fields[4]
			}
		}
	}
	return ""
}

func ownCgroup2() string {
	b, _ := os.ReadFile("/proc/self/cgroup")
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return rest
		}
	}
	return ""
}

// Processes are spawned straight into the group's directory fd.
func TestCgroupPlacement(t *testing.T) {
	mnt := cgroup2Mount()
	if mnt == "" || os.Geteuid() != 0 {
		t.Skip("skipping: needs root and a cgroup2 mount")
	}
	own := ownCgroup2()
	dir := filepath.Join(mnt, own, fmt.Sprintf("envd-proc-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("skipping: cannot create a cgroup: %v", err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	s := New(nil, nil, nil, &fdManager{fds: map[cgroups.Kind]int{cgroups.User: fd}})
	t.Cleanup(func() {
		must(t, s.Shutdown(context.Background()))
		unix.Close(fd)
		if err := os.Remove(dir); err != nil {
			t.Errorf("removing test cgroup: %v", err)
		}
	})
	st := startStream(t, s, context.Background(), cmdReq("/bin/cat", "/proc/self/cgroup")).wait(t)
	want := "0::" + filepath.Join(own, filepath.Base(dir)) + "\n"
	if !strings.Contains(st.stdout.String(), want) {
		t.Errorf("/proc/self/cgroup = %q, want line %q", st.stdout.String(), want)
	}
	// A PTY asks for its own kind, which this manager does not place.
	st = startStream(t, s, context.Background(), ptyReq("/bin/cat", 80, 24, "/proc/self/cgroup")).wait(t)
	if strings.Contains(st.pty.String(), filepath.Base(dir)) {
		t.Errorf("PTY process placed in the user group: %q", st.pty.String())
	}
}

// A group fd the kernel refuses does not fail the command (WIRE §9.5).
func TestCgroupFailureFallsBack(t *testing.T) {
	t.Parallel()
	f, err := os.CreateTemp(t.TempDir(), "not-a-cgroup")
	must(t, err)
	defer f.Close()
	m := &fdManager{fds: map[cgroups.Kind]int{cgroups.User: int(f.Fd())}}
	s := newServiceWith(t, nil, users.Default, m)
	st := startStream(t, s, context.Background(), cmdReq("/bin/echo", "ran")).wait(t)
	if st.err != nil || st.stdout.String() != "ran\n" {
		t.Errorf("err %v stdout %q", st.err, st.stdout.String())
	}
}
