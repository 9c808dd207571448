// Package pid1 (Test-only) runs the real envd bundle as PID 1 of a new PID namespace
// (util-linux `unshare --pid --fork --mount-proc`, so envd-init's /proc is
// the namespace's), the way it runs in a VM: it inherits every orphan of
// the sandbox, nothing reaps behind its back, and a signal it gets from
// outside is the only way to stop it. It needs root and unshare; without
// them it skips.
package pid1

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/gen/filesystem/filesystemconnect"
	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/gen/process/processconnect"
	"github.com/envd-project/envd/test/envdtest"
)

// tree is envd-init running as PID 1 of its own PID namespace, under the
// unshare that made the namespace (unshare exits with envd-init's status).
type tree struct {
	unshare *exec.Cmd
	url     string
	log     *envdtest.LockedBuffer
	done    chan struct{}
	err     error
	proc    processconnect.ProcessClient
}

// startPID1 runs the bundle's envd-init as PID 1 of a new PID namespace,
// with extra environment and flags, and waits until envd-proc answers
// through it.
func startPID1(t *testing.T, env []string, flags ...string) *tree {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a PID namespace needs root")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("unshare (util-linux) is not installed")
	}
	dir, err := envdtest.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	port, err := envdtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	tr := &tree{url: fmt.Sprintf("http://127.0.0.1:%d", port), log: &envdtest.LockedBuffer{}, done: make(chan struct{})}
	// --kill-child: envd-init never outlives a killed unshare (a failed test).
	args := append([]string{"--pid", "--fork", "--mount-proc", "--kill-child",
		filepath.Join(dir, "envd-init"), "--isnotfc", "--no-cgroups", "--port", strconv.Itoa(port)}, flags...)
	tr.unshare = exec.Command(unshare, args...)
	tr.unshare.Env = append(os.Environ(), env...)
	tr.unshare.Stdout, tr.unshare.Stderr = tr.log, tr.log
	tr.unshare.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := tr.unshare.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { tr.err = tr.unshare.Wait(); close(tr.done) }()
	t.Cleanup(func() {
		select {
		case <-tr.done:
		default:
			if pid := tr.initPid(); pid != 0 {
				_ = syscall.Kill(pid, syscall.SIGTERM)
			}
			select {
			case <-tr.done:
			case <-time.After(15 * time.Second):
				_ = syscall.Kill(-tr.unshare.Process.Pid, syscall.SIGKILL)
				<-tr.done
				t.Error("envd-init did not exit within 15s of SIGTERM")
			}
		}
		if t.Failed() {
			t.Logf("envd log:\n%s", tr.log.String())
		}
	})
	tr.proc = processconnect.NewProcessClient(http.DefaultClient, tr.url, connect.WithProtoJSON())
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-tr.done:
			t.Fatalf("envd-init exited: %v\n%s", tr.err, tr.log.String())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := tr.proc.List(ctx, connect.NewRequest(&procpb.ListRequest{}))
		cancel()
		if err == nil && tr.initPid() != 0 {
			return tr
		}
		if time.Now().After(deadline) {
			t.Fatalf("envd-proc does not answer through envd-init: %v\n%s", err, tr.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// initPid is envd-init's pid as seen from here (the test's namespace): the
// one child of unshare.
func (tr *tree) initPid() int {
	for _, pid := range envdtest.Children(tr.unshare.Process.Pid) {
		return pid
	}
	return 0
}

// pluginPid is the named plugin's pid as seen from here, or 0.
func (tr *tree) pluginPid(name string) int {
	for _, pid := range envdtest.Children(tr.initPid()) {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.TrimSpace(string(comm)) == name {
			return pid
		}
	}
	return 0
}

// result is what one Start stream delivered.
type result struct {
	pid    uint32
	stdout bytes.Buffer
	end    *procpb.ProcessEvent_EndEvent
}

func (tr *tree) run(ctx context.Context, script string) (*result, error) {
	stream, err := tr.proc.Start(ctx, connect.NewRequest(&procpb.StartRequest{
		Process: &procpb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", script}},
	}))
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	var r result
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().GetEvent().(type) {
		case *procpb.ProcessEvent_Start:
			r.pid = ev.Start.GetPid()
		case *procpb.ProcessEvent_Data:
			r.stdout.Write(ev.Data.GetStdout())
		case *procpb.ProcessEvent_End:
			r.end = ev.End
		}
	}
	if err := stream.Err(); err != nil {
		return &r, err
	}
	if r.end == nil {
		return &r, errors.New("stream ended without an end event")
	}
	return &r, nil
}

// zombies lists the zombies in envd's PID namespace, read from inside it
// (through envd itself), with their parents.
func (tr *tree) zombies(t *testing.T) map[string]string {
	t.Helper()
	r, err := tr.run(envdtest.Ctx(t, 20*time.Second), "cat /proc/[0-9]*/stat 2>/dev/null; true")
	if err != nil {
		t.Fatalf("reading /proc in the namespace: %v", err)
	}
	out := map[string]string{}
	sawInit := false
	for _, line := range strings.Split(r.stdout.String(), "\n") {
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		open, end := strings.IndexByte(line, '('), strings.LastIndexByte(line, ')')
		if open < 0 || end < open {
			continue
		}
		pid, comm := strings.TrimSpace(line[:open]), line[open+1:end]
		f := strings.Fields(line[end+1:])
		if len(f) < 2 {
			continue
		}
		if pid == "1" && comm == "envd-init" {
			sawInit = true
		}
		if f[0] == "Z" {
			out[pid] = comm + " (parent " + f[1] + ")"
		}
	}
	if !sawInit {
		t.Fatalf("pid 1 of the namespace is not envd-init:\n%s", r.stdout.String())
	}
	return out
}

// noLastingZombie fails when a zombie is still there 1 s after it was seen.
func (tr *tree) noLastingZombie(t *testing.T) {
	t.Helper()
	first := tr.zombies(t)
	if len(first) == 0 {
		return
	}
	time.Sleep(time.Second)
	for pid, what := range tr.zombies(t) {
		if first[pid] == what {
			t.Errorf("zombie %s %s for more than 1 s", pid, what)
		}
	}
}

// TestPID1ReapsOrphansAndKeepsExitCodes: as PID 1, envd-init adopts and
// reaps the sandbox's orphans, and user processes still get their exact
// exit codes while orphans are reaped around them.
func TestPID1ReapsOrphansAndKeepsExitCodes(t *testing.T) {
	t.Parallel() // with the crash loop, which mostly waits
	// --verbose: the reaper logs each orphan it reaps.
	tr := startPID1(t, nil, "--verbose")
	ctx := envdtest.Ctx(t, 60*time.Second)

	// envd-init is PID 1 and envd-proc its child, inside the namespace.
	r, err := tr.run(ctx, `cat /proc/1/comm; cat /proc/$PPID/comm; cut -d' ' -f4 /proc/$PPID/stat`)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.stdout.String(); got != "envd-init\nenvd-proc\n1\n" {
		t.Fatalf("inside the namespace: pid 1, the parent of a user process, its parent: %q", got)
	}

	// A double fork: the grandchild is orphaned and re-parented to PID 1.
	r, err = tr.run(ctx, `p=$( (sleep 0.3 >/dev/null 2>&1 & echo $!) ); sleep 0.05; cut -d' ' -f4 /proc/$p/stat; exit 0`)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(r.stdout.String()); got != "1" {
		t.Fatalf("the orphaned grandchild's parent is %q, want 1 (envd-init)", got)
	}

	// Many user processes with distinct exit codes, each leaving orphans
	// behind, while other processes churn out orphans as fast as they can.
	const users, churners, churns = 48, 4, 100
	churnDone := make(chan error, churners)
	for range churners {
		go func() {
			r, err := tr.run(ctx, fmt.Sprintf(`i=0; while [ $i -lt %d ]; do (sleep 0.01 &); (true &); i=$((i+1)); done; exit 0`, churns))
			if err == nil && r.end.GetExitCode() != 0 {
				err = fmt.Errorf("churner: %s", r.end.GetStatus())
			}
			churnDone <- err
		}()
	}
	type outcome struct {
		code int
		r    *result
		err  error
	}
	outcomes := make(chan outcome, users)
	for i := range users {
		code := (i*37 + 1) % 256 // distinct, spread over 1..255
		go func() {
			r, err := tr.run(ctx, fmt.Sprintf(`(sleep 0.2 &); (sleep 0.0%d &); (true &); exit %d`, i%10, code))
			outcomes <- outcome{code, r, err}
		}()
	}
	for range users {
		o := <-outcomes
		if o.err != nil {
			t.Errorf("exit %d: %v", o.code, o.err)
			continue
		}
		want := fmt.Sprintf("exit status %d", o.code)
		if int(o.r.end.GetExitCode()) != o.code || !o.r.end.GetExited() || o.r.end.GetStatus() != want {
			t.Errorf("process that exits %d ended with code %d, exited %v, status %q",
				o.code, o.r.end.GetExitCode(), o.r.end.GetExited(), o.r.end.GetStatus())
		}
	}
	for range churners {
		if err := <-churnDone; err != nil {
			t.Error(err)
		}
	}
	// The longest orphan lived 0.3 s: past that plus 1 s, no zombie.
	time.Sleep(1300 * time.Millisecond)
	tr.noLastingZombie(t)
	// The orphans were envd-init's to reap (a few `(true &)` may be reaped
	// by their subshell before it exits).
	reaped := 0
	for _, e := range tr.entries() {
		if e.Msg == "reaped orphan" {
			reaped++
		}
	}
	if want := 1 + users*3 + churners*churns*2; reaped < want*9/10 || reaped > want+50 {
		t.Errorf("envd-init reaped %d orphans, want about %d", reaped, want)
	}
	t.Logf("envd-init reaped %d orphans around %d user processes", reaped, users)
	if strings.Contains(tr.log.String(), `"level":"error"`) {
		t.Errorf("envd logged errors")
	}
}

// entry is one line of envd's JSON log.
type entry struct {
	Level  string    `json:"level"`
	Time   time.Time `json:"timestamp"`
	Msg    string    `json:"msg"`
	Plugin string    `json:"plugin"`
	Status string    `json:"status"`
	Line   string    `json:"line"`
	// RetryIn is the delay before the next start, in seconds (zap's
	// duration encoding).
	RetryIn float64 `json:"retry_in"`
}

func (tr *tree) entries() []entry {
	var out []entry
	for _, line := range strings.Split(tr.log.String(), "\n") {
		var e entry
		if json.Unmarshal([]byte(line), &e) == nil && e.Msg != "" {
			out = append(out, e)
		}
	}
	return out
}

// TestPID1SigtermStopsInOrder: SIGTERM to envd-init as PID 1 ends the user
// processes (their streams get the end event, so envd-proc was still there
// to reap and report them), then each plugin exits cleanly (exit status 0,
// not killed), and envd-init exits 0, as unshare reports.
func TestPID1SigtermStopsInOrder(t *testing.T) {
	tr := startPID1(t, nil)
	ctx := envdtest.Ctx(t, 60*time.Second)
	stream, err := tr.proc.Start(ctx, connect.NewRequest(&procpb.StartRequest{
		Process: &procpb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", "(sleep 1000 &); exec sleep 1000"}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() || stream.Msg().GetEvent().GetStart() == nil {
		t.Fatalf("no start event: %v", stream.Err())
	}
	// envd-fs and envd-net come up shortly after envd-proc.
	plugins := map[string]int{}
	for len(plugins) < 3 {
		for _, e := range tr.entries() {
			if e.Msg == "plugin up" {
				plugins[e.Plugin] = tr.pluginPid(e.Plugin)
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("not all plugins came up: %v", plugins)
		}
		time.Sleep(10 * time.Millisecond)
	}
	ended := make(chan *procpb.ProcessEvent_EndEvent, 1)
	var streamErr error
	go func() {
		var end *procpb.ProcessEvent_EndEvent
		for stream.Receive() {
			if e := stream.Msg().GetEvent().GetEnd(); e != nil {
				end = e
			}
		}
		streamErr = stream.Err()
		ended <- end
	}()

	if err := syscall.Kill(tr.initPid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	var end *procpb.ProcessEvent_EndEvent
	select {
	case end = <-ended:
	case <-time.After(20 * time.Second):
		t.Fatal("the user process's stream got no end within 20s of SIGTERM")
	}
	endAt := time.Now()
	if end == nil {
		t.Fatalf("the user process's stream ended without an end event: %v", streamErr)
	}
	if streamErr != nil {
		t.Errorf("the user process's stream ended with %v after its end event", streamErr)
	}
	if end.GetExited() || end.GetStatus() != "signal: killed" {
		t.Errorf("user process ended with %v, want killed by envd-proc", end)
	}
	select {
	case <-tr.done:
	case <-time.After(20 * time.Second):
		t.Fatal("envd-init did not exit within 20s of SIGTERM")
	}
	exited := time.Now()
	if tr.err != nil {
		t.Fatalf("envd-init (PID 1) exit: %v, want 0", tr.err)
	}
	var stopping time.Time
	stopped := map[string]entry{}
	for _, e := range tr.entries() {
		switch {
		case e.Msg == "stopping":
			stopping = e.Time
		case e.Msg == "plugin stopped":
			stopped[e.Plugin] = e
		case e.Msg == "plugin exited; restarting" && !stopping.IsZero():
			t.Errorf("%s restarted while stopping", e.Plugin)
		}
	}
	if stopping.IsZero() {
		t.Fatal("envd-init did not log the stop")
	}
	for name := range plugins {
		e, ok := stopped[name]
		switch {
		case !ok:
			t.Errorf("%s: no stop logged", name)
		case e.Status != "exit status 0":
			t.Errorf("%s ended with %s, want a clean exit", name, e.Status)
		case e.Time.Before(stopping):
			t.Errorf("%s stopped before envd-init began to stop", name)
		case name == "envd-proc" && e.Time.Before(endAt.Add(-time.Second)):
			// Clocks: the log's and ours are the same wall clock; the
			// second of slack only covers the client's read of the end.
			t.Errorf("envd-proc stopped (%v) before its user process's end reached the client (%v)", e.Time, endAt)
		}
	}
	t.Logf("SIGTERM → user process end %v → envd-init exit %v", endAt.Sub(sent), exited.Sub(sent))
}

// cpuTime is the user+system CPU time process pid has used (ticks of 10 ms).
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	// Fields after the comm: state is f[0], utime f[11], stime f[12].
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// The supervisor's restart backoff (supervisor.Options defaults).
const (
	minBackoff = 10 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// TestPID1PluginCrashLoop: envd-fs panics at every start
// (ENVD_TEST_PANIC_AT_START). The panic stays in the plugin: envd-init (PID
// 1) logs its trace and restarts it with doubling delays capped at
// MaxBackoff, spending almost no CPU, while envd-proc and envd-net keep
// serving; a plugin crashing at run time (SIGABRT: Go's crash dump) comes
// back too; and SIGTERM still stops it all with exit 0.
func TestPID1PluginCrashLoop(t *testing.T) {
	t.Parallel()
	tr := startPID1(t, []string{"ENVD_TEST_PANIC_AT_START=envd-fs"})
	ctx := envdtest.Ctx(t, 120*time.Second)
	init := tr.initPid()
	began := time.Now()
	cpu0 := cpuTime(t, init)

	// envd-proc serves during the loop; a runtime crash of envd-proc
	// (SIGABRT) is restarted as well.
	served := 0
	check := func() {
		t.Helper()
		r, err := tr.run(ctx, "echo ok")
		if err != nil || r.stdout.String() != "ok\n" {
			t.Fatalf("envd-proc during envd-fs's crash loop: %v %q", err, r.stdout.String())
		}
		served++
	}
	check()
	proc := tr.pluginPid("envd-proc")
	if err := syscall.Kill(proc, syscall.SIGABRT); err != nil {
		t.Fatal(err)
	}
	for now := tr.pluginPid("envd-proc"); now == 0 || now == proc; now = tr.pluginPid("envd-proc") {
		if ctx.Err() != nil {
			t.Fatal("envd-proc not restarted after SIGABRT")
		}
		time.Sleep(10 * time.Millisecond)
	}
	check()
	net := tr.pluginPid("envd-net")
	if net == 0 {
		t.Fatal("envd-net is not running")
	}
	// A call for the crashing plugin waits a bounded time and says why.
	fs := filesystemconnect.NewFilesystemClient(http.DefaultClient, tr.url, connect.WithProtoJSON())
	t0 := time.Now()
	_, err := fs.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: "/"}))
	if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "envd-fs") {
		t.Errorf("Stat while envd-fs crash-loops: %v, want unavailable naming envd-fs", err)
	}
	if d := time.Since(t0); d > 10*time.Second {
		t.Errorf("Stat while envd-fs crash-loops took %v", d)
	}

	// Failed starts of envd-fs, until the delay has been at the cap twice.
	var fails []time.Time
	var delays []time.Duration
	capped := func() bool {
		fails, delays = fails[:0], delays[:0]
		for _, e := range tr.entries() {
			if e.Msg == "plugin start failed" && e.Plugin == "envd-fs" {
				fails = append(fails, e.Time)
				delays = append(delays, time.Duration(e.RetryIn*float64(time.Second)))
			}
		}
		n := 0
		for i := 1; i < len(fails); i++ {
			if fails[i].Sub(fails[i-1]) >= maxBackoff*8/10 {
				n++
			}
		}
		return n >= 2
	}
	for !capped() {
		select {
		case <-tr.done:
			t.Fatalf("envd-init exited: %v", tr.err)
		case <-ctx.Done():
			t.Fatalf("envd-fs's restart delay never reached the cap twice; failed starts at %v", fails)
		case <-time.After(500 * time.Millisecond):
		}
		check()
	}
	elapsed := time.Since(began)
	cpu := cpuTime(t, init) - cpu0

	// The delays double from MinBackoff and stay at MaxBackoff: a handful
	// of starts, not a loop. Each gap is the delay plus one failed start.
	var gaps []time.Duration
	for i := 1; i < len(fails); i++ {
		gaps = append(gaps, fails[i].Sub(fails[i-1]).Round(time.Millisecond))
	}
	t.Logf("failed starts: %d in %v; gaps %v", len(fails), elapsed.Round(time.Millisecond), gaps)
	// Delays up to the cap: 10ms·2^k for k=0..9, then 5s each.
	if max := 10 + int(elapsed/maxBackoff) + 2; len(fails) > max {
		t.Errorf("%d failed starts in %v: more than the backoff allows (%d)", len(fails), elapsed, max)
	}
	// The delay envd-init chose is capped, and it really waited it (a gap
	// also holds one failed start, which a loaded machine can stretch to
	// seconds, so the gap itself is no bound).
	for i, d := range delays {
		if d > maxBackoff {
			t.Errorf("failed start %d: retry in %v, beyond the cap %v", i, d, maxBackoff)
		}
		if i+1 < len(fails) && gaps[i] < d-50*time.Millisecond {
			t.Errorf("gap %d is %v, shorter than the delay %v it announced", i, gaps[i], d)
		}
	}
	// No busy loop: envd-init's CPU over the whole loop.
	share := float64(cpu) / float64(elapsed)
	t.Logf("envd-init CPU during the crash loop: %v in %v (%.2f%% of one core); envd-proc served %d calls",
		cpu, elapsed.Round(time.Millisecond), share*100, served)
	if share > 0.05 {
		t.Errorf("envd-init used %.1f%% of a core while envd-fs crash-looped", share*100)
	}

	// The panic happened in the plugin; PID 1 logged its trace.
	var trace bool
	for _, e := range tr.entries() {
		if e.Plugin == "envd-fs" && strings.Contains(e.Line, "ENVD_TEST_PANIC_AT_START") && strings.HasPrefix(e.Line, "panic:") {
			trace = true
		}
	}
	if !trace {
		t.Error("no panic trace of envd-fs in envd-init's log")
	}
	if now := tr.pluginPid("envd-net"); now != net {
		t.Errorf("envd-net changed from %d to %d during envd-fs's crash loop", net, now)
	}

	if err := syscall.Kill(init, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-tr.done:
	case <-time.After(20 * time.Second):
		t.Fatal("envd-init did not exit within 20s of SIGTERM")
	}
	if tr.err != nil {
		t.Fatalf("envd-init (PID 1) exit: %v, want 0", tr.err)
	}
}

// TestPID1SigtermDuringHandshake: a plugin stuck before its go-plugin
// handshake (here an envd-fs that only sleeps) does not hold up SIGTERM
// until the start timeout (10 s): the stop kills it and envd-init exits 0
// at once.
func TestPID1SigtermDuringHandshake(t *testing.T) {
	bundle, err := envdtest.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, name := range []string{"envd-proc", "envd-net"} {
		// The bundle tells its role from the name it is started under.
		if err := os.Symlink(filepath.Join(bundle, "envd-init"), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "envd-fs"), []byte("#!/bin/sh\nexec sleep 1000\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tr := startPID1(t, nil, "--plugin-dir", dir)
	ctx := envdtest.Ctx(t, 30*time.Second)
	stuck := 0
	for stuck == 0 {
		for _, pid := range envdtest.Children(tr.initPid()) {
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			if strings.TrimSpace(string(comm)) == "sleep" {
				stuck = pid
			}
		}
		if ctx.Err() != nil {
			t.Fatal("the stuck envd-fs never started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := syscall.Kill(tr.initPid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	select {
	case <-tr.done:
	case <-time.After(30 * time.Second):
		t.Fatal("envd-init did not exit within 30s of SIGTERM")
	}
	took := time.Since(sent)
	if tr.err != nil {
		t.Fatalf("envd-init (PID 1) exit: %v, want 0", tr.err)
	}
	t.Logf("SIGTERM → exit with envd-fs stuck in its handshake: %v", took.Round(time.Millisecond))
	// The start timeout is 10 s; a stop that waited for it took longer
	// than 5 s whatever the load.
	if took > 5*time.Second {
		t.Errorf("SIGTERM took %v: it waited for the stuck plugin's start timeout", took)
	}
}
