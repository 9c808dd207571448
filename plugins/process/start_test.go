package process

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	controlpb "github.com/envd-project/envd/gen/control"
	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/internal/cgroups"
	"github.com/envd-project/envd/internal/users"
	"github.com/envd-project/envd/plugins/pluginkit/callinfo"
)

func TestStartPipeOutput(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	st := startStream(t, s, context.Background(), shReq("printf out; printf err >&2")).wait(t)
	if st.err != nil {
		t.Fatalf("Start: %v", st.err)
	}
	if st.pid == 0 {
		t.Fatal("no start event with a pid")
	}
	if got := st.stdout.String(); got != "out" {
		t.Errorf("stdout = %q", got)
	}
	if got := st.stderr.String(); got != "err" {
		t.Errorf("stderr = %q", got)
	}
	if st.pty.Len() != 0 {
		t.Errorf("pty output in pipe mode: %q", st.pty.String())
	}
	e := st.end
	if e == nil || e.GetExitCode() != 0 || !e.GetExited() || e.GetStatus() != "exit status 0" || e.Error != nil {
		t.Errorf("end = %v", e)
	}
}

// The end event must read exactly like os/exec's ProcessState.String().
func TestEndEventMatchesProcessState(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	for _, script := range []string{"exit 0", "exit 3", "exit 255", "kill -KILL $$", "kill -TERM $$", "kill -INT $$"} {
		ref := exec.Command("/bin/sh", "-c", script)
		refErr := ref.Run()
		st := startStream(t, s, context.Background(), shReq(script)).wait(t)
		if st.err != nil {
			t.Fatalf("%s: Start: %v", script, st.err)
		}
		e := st.end
		if e.GetExitCode() != int32(ref.ProcessState.ExitCode()) || e.GetExited() != ref.ProcessState.Exited() || e.GetStatus() != ref.ProcessState.String() {
			t.Errorf("%s: end = %v, want code %d exited %v status %q", script, e, ref.ProcessState.ExitCode(), ref.ProcessState.Exited(), ref.ProcessState.String())
		}
		if refErr == nil && e.Error != nil {
			t.Errorf("%s: error set on success: %q", script, e.GetError())
		}
		if refErr != nil && e.GetError() != refErr.Error() {
			t.Errorf("%s: error = %q, want %q", script, e.GetError(), refErr.Error())
		}
	}
	st := startStream(t, s, context.Background(), shReq("kill -KILL $$")).wait(t)
	if e := st.end; e.GetExitCode() != -1 || e.GetExited() || e.GetStatus() != "signal: killed" || e.GetError() != "signal: killed" {
		t.Errorf("killed: end = %v", e)
	}
	st = startStream(t, s, context.Background(), shReq("exit 7")).wait(t)
	if e := st.end; e.GetExitCode() != 7 || !e.GetExited() || e.GetStatus() != "exit status 7" || e.GetError() != "exit status 7" {
		t.Errorf("exit 7: end = %v", e)
	}
}

func TestMissingCommandExits127(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	for _, cmd := range []string{"/definitely/not/here", "no-such-command-envd", ""} {
		st := startStream(t, s, context.Background(), cmdReq(cmd, "arg")).wait(t)
		if st.err != nil {
			t.Fatalf("%q: Start returned an RPC error: %v", cmd, st.err)
		}
		if st.pid == 0 || st.end == nil {
			t.Fatalf("%q: want start and end events, got pid %d end %v", cmd, st.pid, st.end)
		}
		if cmd == "" {
			// exec "" is refused by the shell, still not an RPC error.
			if st.end.GetExitCode() == 0 {
				t.Errorf("empty cmd: end = %v", st.end)
			}
			continue
		}
		if st.end.GetExitCode() != 127 || st.end.GetStatus() != "exit status 127" {
			t.Errorf("%q: end = %v", cmd, st.end)
		}
		if !strings.Contains(st.stderr.String(), "not found") {
			t.Errorf("%q: stderr = %q, want a not-found message", cmd, st.stderr.String())
		}
	}
}

func TestArgsAreNotInterpreted(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	args := []string{"$HOME", "a b", "'q'", "`id`", ";", "*"}
	st := startStream(t, s, context.Background(), cmdReq("/usr/bin/printf", append([]string{"[%s]"}, args...)...)).wait(t)
	want := ""
	for _, a := range args {
		want += "[" + a + "]"
	}
	if got := st.stdout.String(); got != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}
}

func TestWrapperSetsOOMScore(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	st := startStream(t, s, context.Background(), cmdReq("/bin/cat", "/proc/self/oom_score_adj")).wait(t)
	if got := strings.TrimSpace(st.stdout.String()); got != "100" {
		t.Errorf("oom_score_adj = %q (stderr %q)", got, st.stderr.String())
	}
}

func TestWrapperPriorityHelpers(t *testing.T) {
	t.Parallel()
	found := func(name string) (string, error) { return "/usr/bin/" + name, nil }
	missing := func(string) (string, error) { return "", exec.ErrNotFound }
	w := newWrapper(missing)
	if len(w.prefix) != 0 {
		t.Errorf("helpers missing: prefix = %q", w.prefix)
	}
	w = newWrapper(found)
	argv := w.argv("cmd", []string{"a"})
	if argv[0] != "/bin/sh" || argv[1] != "-c" || argv[2] != wrapperScript || argv[3] != "sh" || !slices.Equal(argv[len(argv)-2:], []string{"cmd", "a"}) {
		t.Errorf("argv = %q", argv)
	}
	// nice appears exactly when envd's own nice value is not 0.
	if hasNice := slices.Contains(w.prefix, "/usr/bin/nice"); hasNice != (ownNice() != 0) {
		t.Errorf("prefix %q with own nice %d", w.prefix, ownNice())
	}
}

func readEnv(t *testing.T, st *stream) []string {
	t.Helper()
	if st.err != nil || st.end.GetExitCode() != 0 {
		t.Fatalf("env failed: %v %v %q", st.err, st.end, st.stderr.String())
	}
	return strings.Split(strings.TrimSuffix(st.stdout.String(), "\x00"), "\x00")
}

func TestEnvOrderAndNoLeaks(t *testing.T) {
	t.Setenv("ENVD_TEST_LEAK", "leaked")
	s := newService(t, &controlpb.Config{DefaultUser: "root", EnvVars: map[string]string{"DEF_A": "1", "SHARED": "from-defaults", "HOME": "/defaults-home"}})
	req := cmdReq("/usr/bin/env", "-0")
	req.Process.Envs = map[string]string{"REQ_B": "2", "SHARED": "from-request"}
	env := readEnv(t, startStream(t, s, context.Background(), req).wait(t))

	wantPath := os.Getenv("PATH")
	want := map[string]string{
		"PATH": wantPath, "HOME": "/defaults-home", "USER": "root", "LOGNAME": "root",
		"DEF_A": "1", "SHARED": "from-request", "REQ_B": "2",
		// dash exports PWD itself (as with the reference's /bin/sh wrapper).
		"PWD": "/root",
	}
	got := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if _, dup := got[k]; dup {
			t.Errorf("duplicate %s in %q", k, env)
		}
		got[k] = v
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected variable %s=%q", k, got[k])
		}
	}
}

func TestEnvBuildOrder(t *testing.T) {
	s := newService(t, &controlpb.Config{EnvVars: map[string]string{"D": "d"}})
	env := s.environ(&users.User{Name: "u", Home: "/h"}, map[string]string{"R": "r"})
	want := []string{"PATH=" + os.Getenv("PATH"), "HOME=/h", "USER=u", "LOGNAME=u", "D=d", "R=r"}
	if !slices.Equal(env, want) {
		t.Errorf("environ = %q, want %q", env, want)
	}
}

func TestCwdResolution(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	s := newService(t, &controlpb.Config{DefaultUser: "root", DefaultWorkdir: work})
	pwd := func(s *Service, cwd *string) string {
		req := cmdReq("/bin/pwd", "-P")
		req.Process.Cwd = cwd
		st := startStream(t, s, context.Background(), req).wait(t)
		if st.err != nil {
			t.Fatalf("cwd %v: %v", cwd, st.err)
		}
		return strings.TrimSpace(st.stdout.String())
	}
	if got := pwd(s, nil); got != work {
		t.Errorf("empty cwd → %q, want default workdir %q", got, work)
	}
	if got := pwd(s, ptr("")); got != work {
		t.Errorf("\"\" cwd → %q, want default workdir %q", got, work)
	}
	if got := pwd(s, ptr("/tmp")); got != "/tmp" {
		t.Errorf("/tmp → %q", got)
	}
	if got := pwd(s, ptr("~")); got != "/root" {
		t.Errorf("~ → %q", got)
	}
	noWork := newService(t, nil)
	if got := pwd(noWork, nil); got != "/root" {
		t.Errorf("no default workdir → %q, want root's home", got)
	}

	req := cmdReq("/bin/true")
	req.Process.Cwd = ptr("/no/such/dir")
	err := s.Start(context.Background(), req, func(*procpb.StartResponse) error { return nil })
	requireCode(t, err, connect.CodeInvalidArgument, "cwd '/no/such/dir' does not exist")
	req.Process.Cwd = ptr("relative-missing")
	err = s.Start(context.Background(), req, func(*procpb.StartResponse) error { return nil })
	requireCode(t, err, connect.CodeInvalidArgument, "cwd '/root/relative-missing' does not exist")
	req.Process.Cwd = ptr("~other/x")
	err = s.Start(context.Background(), req, func(*procpb.StartResponse) error { return nil })
	requireCode(t, err, connect.CodeInvalidArgument, "")
}

func TestUnknownUser(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	ctx := callinfo.With(context.Background(), callinfo.Info{User: "no-such-user-envd"})
	err := s.Start(ctx, cmdReq("/bin/true"), func(*procpb.StartResponse) error { t.Error("event sent"); return nil })
	requireCode(t, err, connect.CodeUnauthenticated, "invalid username: 'no-such-user-envd'")

	bad := newService(t, &controlpb.Config{DefaultUser: "no-default-envd"})
	err = bad.Start(context.Background(), cmdReq("/bin/true"), func(*procpb.StartResponse) error { return nil })
	requireCode(t, err, connect.CodeUnauthenticated, "invalid username: 'no-default-envd'")
}

// ensureUser creates the conventional sandbox user "user" if it is missing.
func ensureUser(t *testing.T) *users.User {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: running as another user needs root")
	}
	db := &users.DB{PasswdPath: "/etc/passwd", GroupPath: "/etc/group"}
	if u, err := db.Lookup("user"); err == nil {
		return u
	}
	if out, err := exec.Command("useradd", "-m", "-d", "/home/user", "-s", "/bin/sh", "user").CombinedOutput(); err != nil {
		t.Logf("useradd: %v: %s", err, out)
	}
	db = &users.DB{PasswdPath: "/etc/passwd", GroupPath: "/etc/group"}
	u, err := db.Lookup("user")
	if err != nil {
		t.Skipf("skipping: cannot create user 'user': %v", err)
	}
	return u
}

func TestNonRootUser(t *testing.T) {
	u := ensureUser(t)
	s := newService(t, nil)
	ctx := callinfo.With(context.Background(), callinfo.Info{User: "user"})
	st := startStream(t, s, ctx, shReq(`echo "$(id -u) $(id -g) $HOME $USER $LOGNAME $(pwd -P)"`)).wait(t)
	want := fmt.Sprintf("%d %d %s user user %s\n", u.UID, u.GID, u.Home, u.Home)
	if got := st.stdout.String(); got != want {
		t.Errorf("got %q, want %q (stderr %q)", got, want, st.stderr.String())
	}

	// The default user from the config applies when no user is named.
	def := newService(t, &controlpb.Config{DefaultUser: "user"})
	st = startStream(t, def, context.Background(), cmdReq("/usr/bin/id", "-un")).wait(t)
	if got := strings.TrimSpace(st.stdout.String()); got != "user" {
		t.Errorf("default user: id -un = %q", got)
	}
}

// Supplementary groups come from the group file, through a private user
// database so the test does not edit /etc/group.
func TestSupplementaryGroups(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: setgroups needs root")
	}
	t.Parallel()
	dir := t.TempDir()
	home := filepath.Join(dir, "home")
	must(t, os.Mkdir(home, 0o755))
	// The user must be able to enter its home through the test's temp dirs.
	must(t, os.Chmod(dir, 0o755))
	must(t, os.Chmod(filepath.Dir(dir), 0o755))
	passwd := filepath.Join(dir, "passwd")
	group := filepath.Join(dir, "group")
	must(t, os.WriteFile(passwd, []byte("root:x:0:0:root:/root:/bin/sh\nsupp:x:4242:4243::"+home+":/bin/sh\n"), 0o644))
	must(t, os.WriteFile(group, []byte("root:x:0:\nsuppprim:x:4243:\nextra1:x:4244:supp\nextra2:x:4245:other,supp\nnotmine:x:4246:other\n"), 0o644))
	s := newServiceWith(t, nil, &users.DB{PasswdPath: passwd, GroupPath: group}, cgroups.Noop{})
	ctx := callinfo.With(context.Background(), callinfo.Info{User: "supp"})
	st := startStream(t, s, ctx, cmdReq("/bin/sh", "-c", `id -u; id -g; id -G; pwd`)).wait(t)
	lines := strings.Fields(st.stdout.String())
	if len(lines) < 4 || lines[0] != "4242" || lines[1] != "4243" || lines[len(lines)-1] != home {
		t.Fatalf("output %q (stderr %q, end %v, err %v)", st.stdout.String(), st.stderr.String(), st.end, st.err)
	}
	groups := lines[2 : len(lines)-1]
	slices.Sort(groups)
	if !slices.Equal(groups, []string{"4243", "4244", "4245"}) {
		t.Errorf("groups = %v, want 4243 4244 4245", groups)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// inheritableFDs lists this test process's own fds above 2 without
// close-on-exec: whoever started "go test" left them open, and every child
// inherits them. They are excluded from the leak check.
func inheritableFDs(t *testing.T) map[string]bool {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	must(t, err)
	fds := map[string]bool{}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil && flags&unix.FD_CLOEXEC == 0 {
			t.Logf("fd %d is inherited by every child of the test binary; ignoring it", fd)
			fds[e.Name()] = true
		}
	}
	return fds
}

// childFDs lists the fds of pid with their targets.
func childFDs(t *testing.T, pid uint32) map[string]string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	fds := map[string]string{}
	for _, e := range ents {
		target, _ := os.Readlink(filepath.Join(dir, e.Name()))
		fds[e.Name()] = target
	}
	return fds
}

func TestChildGetsOnlyStdio(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	inheritable := inheritableFDs(t)
	for _, mode := range []string{"pipe", "pipe-nostdin", "pty"} {
		req := cmdReq("/bin/sleep", "30")
		switch mode {
		case "pty":
			req.Pty = &procpb.PTY{Size: &procpb.PTY_Size{Cols: 80, Rows: 24}}
		case "pipe-nostdin":
			req.Stdin = ptr(false)
		}
		st := startStream(t, s, context.Background(), req)
		pid := st.waitPID(t)
		// Look once the wrapper has exec'd sleep and the loader is done.
		var fds map[string]string
		eventually(t, "sleep to settle", func() bool {
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			fds = childFDs(t, pid)
			for fd := range inheritable {
				delete(fds, fd) // not ours: inherited by every child of this test binary
			}
			return string(comm) == "sleep\n" && len(fds) <= 3
		})
		if len(fds) != 3 {
			t.Errorf("%s: child has fds %v, want only 0, 1, 2", mode, fds)
		}
		for fd, target := range fds {
			if strings.Contains(target, "ptmx") {
				t.Errorf("%s: pty master leaked into the child as fd %s", mode, fd)
			}
			switch mode {
			case "pty":
				if !strings.HasPrefix(target, "/dev/pts/") {
					t.Errorf("pty: fd %s → %s, want the slave", fd, target)
				}
			case "pipe-nostdin":
				if fd == "0" && target != "/dev/null" {
					t.Errorf("stdin=false: fd 0 → %s, want /dev/null", target)
				}
			case "pipe":
				if !strings.HasPrefix(target, "pipe:") {
					t.Errorf("pipe: fd %s → %s", fd, target)
				}
			}
		}
		if _, err := s.SendSignal(context.Background(), &procpb.SendSignalRequest{Process: pidSel(pid), Signal: procpb.Signal_SIGNAL_SIGKILL}); err != nil {
			t.Fatal(err)
		}
		st.wait(t)
	}
}

func TestKillDeadline(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	// Long enough to cover the spawn on a loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	begin := time.Now()
	st := startStream(t, s, ctx, cmdReq("/bin/sleep", "30"))
	pid := st.waitPID(t)
	st.wait(t)
	// The stream and the process share the deadline: the stream either ends
	// with it or, if the kill won the race, with the end event.
	if st.err != nil {
		requireCode(t, st.err, connect.CodeDeadlineExceeded, "")
	} else if st.end.GetStatus() != "signal: killed" {
		t.Errorf("Start ended with %v", st.end)
	}
	c := connectStream(t, s, context.Background(), pidSel(pid))
	c.wait(t)
	if c.err != nil {
		t.Fatalf("Connect after deadline: %v", c.err)
	}
	if c.end.GetStatus() != "signal: killed" || c.end.GetExitCode() != -1 || c.end.GetExited() {
		t.Errorf("end = %v, want signal: killed", c.end)
	}
	if d := time.Since(begin); d > 10*time.Second {
		t.Errorf("took %v", d)
	}
}

// Closing or cancelling the stream never kills the process.
func TestStreamEndDoesNotKill(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	st := startStream(t, s, context.Background(), cmdReq("/bin/sleep", "30"))
	pid := st.waitPID(t)
	st.cancel()
	st.wait(t)
	requireCode(t, st.err, connect.CodeCanceled, "")
	time.Sleep(50 * time.Millisecond)
	if !alive(int(pid)) {
		t.Fatal("process died with its stream")
	}
	list, _ := s.List(context.Background(), &procpb.ListRequest{})
	if len(list.GetProcesses()) != 1 || list.GetProcesses()[0].GetPid() != pid {
		t.Fatalf("List = %v", list)
	}

	// A failing send (client gone) behaves the same.
	gone := fmt.Errorf("client gone")
	n := 0
	err := s.Start(context.Background(), cmdReq("/bin/sleep", "30"), func(r *procpb.StartResponse) error {
		n++
		if r.GetEvent().GetStart() != nil {
			pid = r.GetEvent().GetStart().GetPid()
		}
		return gone
	})
	if err == nil || n != 1 {
		t.Fatalf("Start with failing send: err %v after %d sends", err, n)
	}
	if !alive(int(pid)) {
		t.Fatal("process died when its client went away")
	}
}

func TestNoEarlyOutputLost(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	for i := 0; i < 20; i++ {
		st := startStream(t, s, context.Background(), cmdReq("/bin/echo", "first")).wait(t)
		if st.stdout.String() != "first\n" {
			t.Fatalf("run %d: stdout %q", i, st.stdout.String())
		}
		pst := startStream(t, s, context.Background(), &procpb.StartRequest{
			Process: &procpb.ProcessConfig{Cmd: "/bin/echo", Args: []string{"first"}},
			Pty:     &procpb.PTY{Size: &procpb.PTY_Size{Cols: 80, Rows: 24}},
		}).wait(t)
		if pst.pty.String() != "first\r\n" {
			t.Fatalf("pty run %d: output %q", i, pst.pty.String())
		}
	}
}

func TestSignalStopsWaitingForGrandchildPipes(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	st := startStream(t, s, context.Background(), shReq("sleep 30 & echo $!; wait"))
	pid := st.waitPID(t)
	st.waitOutput(t, "\n")
	grandchild, err := strconv.Atoi(strings.TrimSpace(st.stdout.String()))
	must(t, err)
	defer syscall.Kill(grandchild, syscall.SIGKILL)

	_, err = s.SendSignal(context.Background(), &procpb.SendSignalRequest{Process: pidSel(pid), Signal: procpb.Signal_SIGNAL_SIGTERM})
	must(t, err)
	st.wait(t)
	if st.end.GetStatus() != "signal: terminated" || st.end.GetExitCode() != -1 {
		t.Errorf("end = %v", st.end)
	}
	// Only the child pid was signalled.
	if !alive(grandchild) {
		t.Error("grandchild was signalled too")
	}
}

func TestSendSignal(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	st := startStream(t, s, context.Background(), cmdReq("/bin/sleep", "30"))
	pid := st.waitPID(t)
	for _, sig := range []procpb.Signal{procpb.Signal_SIGNAL_UNSPECIFIED, procpb.Signal(2), procpb.Signal(1)} {
		_, err := s.SendSignal(context.Background(), &procpb.SendSignalRequest{Process: pidSel(pid), Signal: sig})
		requireCode(t, err, connect.CodeUnimplemented, "invalid signal: "+sig.String())
	}
	_, err := s.SendSignal(context.Background(), &procpb.SendSignalRequest{Process: pidSel(4000000), Signal: procpb.Signal_SIGNAL_SIGKILL})
	requireCode(t, err, connect.CodeNotFound, "process with pid 4000000 not found")
	_, err = s.SendSignal(context.Background(), &procpb.SendSignalRequest{Signal: procpb.Signal_SIGNAL_SIGKILL})
	requireCode(t, err, connect.CodeUnimplemented, "")
	_, err = s.SendSignal(context.Background(), &procpb.SendSignalRequest{Process: pidSel(pid), Signal: procpb.Signal_SIGNAL_SIGKILL})
	must(t, err)
	st.wait(t)
	if st.end.GetStatus() != "signal: killed" {
		t.Errorf("end = %v", st.end)
	}
	// Gone from the live table: signals now find nothing.
	_, err = s.SendSignal(context.Background(), &procpb.SendSignalRequest{Process: pidSel(pid), Signal: procpb.Signal_SIGNAL_SIGKILL})
	requireCode(t, err, connect.CodeNotFound, fmt.Sprintf("process with pid %d not found", pid))
}

func TestKeepalive(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	ctx := callinfo.With(context.Background(), callinfo.Info{Keepalive: 100 * time.Millisecond})
	t0 := time.Now()
	st := startStream(t, s, ctx, cmdReq("/bin/sleep", "0.55")).wait(t)
	// Bounds from the stream's real length, so a loaded machine (a slow
	// start, a late timer) cannot fail it: some keepalives, never more
	// often than the interval.
	if most := int(time.Since(t0)/(100*time.Millisecond)) + 1; st.keepalives < 1 || st.keepalives > most {
		t.Errorf("keepalives = %d over %v at 100ms (at most %d)", st.keepalives, time.Since(t0), most)
	}
	if st.end.GetExitCode() != 0 {
		t.Errorf("end = %v", st.end)
	}
}

// Data restarts the keepalive timer: events arriving faster than the
// interval leave no room for a keepalive.
func TestKeepaliveResetByData(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	p := &proc{pid: 1, hub: newHubForTest(s)}
	sub := p.hub.Subscribe()
	ctx := callinfo.With(context.Background(), callinfo.Info{Keepalive: time.Second})
	var got []string
	done := make(chan error, 1)
	go func() {
		done <- s.stream(ctx, p, sub, func(ev *procpb.ProcessEvent) error {
			switch ev.GetEvent().(type) {
			case *procpb.ProcessEvent_Keepalive:
				got = append(got, "k")
			case *procpb.ProcessEvent_Data:
				got = append(got, "d")
			case *procpb.ProcessEvent_End:
				got = append(got, "e")
			}
			return nil
		})
	}()
	// 1.2 s of data every 60 ms: without the reset a keepalive would fall
	// in it. Chunks may merge when the reader lags; only the order counts.
	for i := 0; i < 20; i++ {
		p.hub.Publish(stdoutEvent([]byte("x")))
		time.Sleep(60 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond)
	p.end = endEvent(nil, nil)
	p.hub.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	seq := strings.Join(got, "")
	last := strings.LastIndex(seq, "d")
	if !strings.HasPrefix(seq, "d") || strings.Contains(seq[:last], "k") || !strings.Contains(seq[last:], "k") || !strings.HasSuffix(seq, "e") {
		t.Errorf("events %q: want data (no keepalive among it), then keepalives, then end", seq)
	}
}

// The priority helpers found at startup run in front of the command.
func TestWrapperRunsPrefix(t *testing.T) {
	t.Parallel()
	nice, err := exec.LookPath("nice")
	if err != nil {
		t.Skip("skipping: no nice binary")
	}
	s := newService(t, nil)
	s.wrap = wrapper{prefix: []string{nice, "-n", "3"}}
	st := startStream(t, s, context.Background(), cmdReq("/bin/sh", "-c", "ps -o ni= -p $$")).wait(t)
	if got := strings.TrimSpace(st.stdout.String()); got != "3" {
		t.Errorf("nice = %q (stderr %q)", got, st.stderr.String())
	}
}
