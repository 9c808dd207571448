package integration

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/gen/process/processconnect"
	"github.com/envd-project/envd/test/envdtest"
)

// fdTargets lists what pid's open fds point at.
func fdTargets(t *testing.T, pid int) []string {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())); err == nil {
			out = append(out, e.Name()+" -> "+target)
		}
	}
	return out
}

// TestInheritedFDsDoNotLeak starts the bundle with a file its launcher left
// open (fd 3, not close-on-exec): envd-init has it, no plugin and no user
// process does (issue 12, item 6).
func TestInheritedFDsDoNotLeak(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inherited-by-envd-init")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	e := envdtest.StartWithFiles(t, []*os.File{f})
	if got := strings.Join(fdTargets(t, e.Pid()), "\n"); !strings.Contains(got, path) {
		t.Fatalf("envd-init did not inherit the file (the test proves nothing):\n%s", got)
	}
	for _, name := range []string{"envd-proc", "envd-fs", "envd-net"} {
		pid := e.PluginPid(name)
		if pid == 0 {
			t.Fatalf("%s not running", name)
		}
		for _, fd := range fdTargets(t, pid) {
			if strings.Contains(fd, path) {
				t.Errorf("%s (pid %d) holds the inherited fd %s", name, pid, fd)
			}
		}
	}
	cl := processconnect.NewProcessClient(http.DefaultClient, e.URL)
	// ls lists its own fds: 0-2 and the directory it reads (3), nothing else.
	c, err := startAll(t, envdtest.Ctx(t, 20*time.Second), cl, &procpb.StartRequest{
		Process: &procpb.ProcessConfig{Cmd: "/bin/ls", Args: []string{"-l", "/proc/self/fd"}}}, "")
	if err != nil {
		t.Fatal(err)
	}
	out := c.stdout.String()
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[len(f)-2] != "->" {
			continue
		}
		if fd := f[len(f)-3]; fd != "0" && fd != "1" && fd != "2" && fd != "3" {
			t.Errorf("user process holds fd %s -> %s", fd, f[len(f)-1])
		}
	}
	if strings.Contains(out, path) || !strings.Contains(out, "/proc/") {
		t.Errorf("user process fds:\n%s", out)
	}
}
