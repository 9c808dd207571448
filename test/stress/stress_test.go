// Package stress is the stress and fault suite (Test-only): it drives the real envd
// bundle (test/envdtest) with many concurrent clients, in every protocol,
// making every RPC of process.Process and filesystem.Filesystem and every
// /files call, while it kill -9s and SIGSTOP/SIGCONTs the plugins at
// random. At the end it checks that no process grew (fds, threads, PSS)
// from the first measured round to the last, that nothing is left a zombie
// or running, that no upload left a partial or stray file, that no call
// hung past its deadline, and that every call got a status (no empty
// reply, no cut stream). The one exception is a handed-off call (/files,
// ListDir over HTTP/1.1: envd-fs serves the client's connection itself)
// during which envd-fs was killed with SIGKILL: a dead process cannot
// answer, and envd-init cannot either once envd-fs took the connection.
// Under SIGSTOP/SIGCONT a handed-off call still gets a status (envd-init
// revokes a handoff that is not confirmed in time and answers 503).
//
// `make stress` runs it for STRESS_DURATION (default 2m); `go test` runs a
// short mode (~30 s) that `make test` includes. Knobs (environment):
//
//	STRESS_DURATION   load time, a Go duration (default 12s; 2m under make stress)
//	STRESS_CLIENTS    concurrent clients (default 12)
//	STRESS_CHAOS      0 turns off the kills and stops
package stress

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/envd-project/envd/test/envdtest"
)

var names = []string{"envd-init", "envd-proc", "envd-fs", "envd-net"}

type config struct {
	duration time.Duration
	rounds   int
	clients  int
	chaos    bool
}

func loadConfig(t *testing.T) config {
	c := config{duration: 12 * time.Second, clients: 12, chaos: true}
	if v := os.Getenv("STRESS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("STRESS_DURATION=%q: %v", v, err)
		}
		c.duration = d
	}
	if v := os.Getenv("STRESS_CLIENTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("STRESS_CLIENTS=%q", v)
		}
		c.clients = n
	}
	c.chaos = os.Getenv("STRESS_CHAOS") != "0"
	// Rounds of about 20 s; at least two, so there is a first and a last.
	c.rounds = max(2, int(c.duration/(20*time.Second)))
	return c
}

// chaos kills and stops plugins at random until ctx ends.
type chaos struct {
	e      *envdtest.Envd
	kills  map[string]int
	stops  map[string]int
	mu     sync.Mutex
	rng    *rand.Rand
	events []string
	// fsKills are the SIGKILLs of envd-fs: [before, after] the kill call.
	fsKills [][2]time.Time
}

// fsKilledDuring reports whether envd-fs got a SIGKILL while a call that
// ran from start to end was in flight: the kill was sent before the call
// ended, and the call began before the kill had been sent.
func (c *chaos) fsKilledDuring(start, end time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range c.fsKills {
		if start.Before(k[1]) && end.After(k[0]) {
			return true
		}
	}
	return false
}

func (c *chaos) run(ctx context.Context) {
	plugins := names[1:]
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(500+c.rng.IntN(1500)) * time.Millisecond):
		}
		name := plugins[c.rng.IntN(len(plugins))]
		pid := c.e.PluginPid(name)
		if pid == 0 {
			continue // restarting
		}
		if c.rng.IntN(100) < 35 {
			before := time.Now()
			if signal(pid, syscall.SIGKILL) {
				after := time.Now()
				c.mu.Lock()
				c.kills[name]++
				if name == "envd-fs" {
					c.fsKills = append(c.fsKills, [2]time.Time{before, after})
				}
				c.mu.Unlock()
			}
			continue
		}
		if !signal(pid, syscall.SIGSTOP) {
			continue
		}
		c.mu.Lock()
		c.stops[name]++
		c.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(200+c.rng.IntN(2300)) * time.Millisecond):
		}
		signal(pid, syscall.SIGCONT)
	}
}

// resume SIGCONTs every plugin (a stop may have raced the round's end).
func (c *chaos) resume() {
	for _, name := range names[1:] {
		signal(c.e.PluginPid(name), syscall.SIGCONT)
	}
}

func (c *chaos) total(m map[string]int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func TestStress(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (the bundle runs processes as other users)")
	}
	cfg := loadConfig(t)
	e := envdtest.Start(t)
	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	fixed := filepath.Join(root, "fixed.bin")
	fixedContent := make([]byte, 512<<10)
	for i := range fixedContent {
		fixedContent[i] = byte(i * 7)
	}
	if err := os.WriteFile(fixed, fixedContent, 0o644); err != nil {
		t.Fatal(err)
	}
	pidOf := func(name string) int {
		if name == "envd-init" {
			return e.Pid()
		}
		return e.PluginPid(name)
	}
	uploads := newUploadLog()
	tl := newTally()
	var inflight atomic.Int64
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d, %d clients, %d rounds of %v, chaos %v", seed, cfg.clients, cfg.rounds, cfg.duration/time.Duration(cfg.rounds), cfg.chaos)
	ch := &chaos{e: e, kills: map[string]int{}, stops: map[string]int{}, rng: rand.New(rand.NewPCG(seed, 1<<32))}
	workers := make([]*worker, cfg.clients)
	for i := range workers {
		w := &worker{id: i, base: e.URL, c: newClients(e.URL, i), dir: filepath.Join(root, fmt.Sprintf("w%d", i)),
			upDir: filepath.Join(root, "up", fmt.Sprintf("w%d", i)), fixed: fixed, fixedSum: sha(fixedContent),
			uploads: uploads, tally: tl, rng: rand.New(rand.NewPCG(seed, uint64(i))), inflight: &inflight,
			fsKilledDuring: ch.fsKilledDuring}
		if err := os.MkdirAll(w.dir, 0o755); err != nil {
			t.Fatal(err)
		}
		workers[i] = w
	}

	// Resources at start, and after each measured round.
	measured := [][]usage{settle(t, e, pidOf, "start", false)}
	var elapsed time.Duration // under load
	for r := 1; r <= cfg.rounds; r++ {
		began := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), cfg.duration/time.Duration(cfg.rounds))
		var wg sync.WaitGroup
		if cfg.chaos {
			wg.Add(1)
			go func() { defer wg.Done(); ch.run(ctx) }()
		}
		done := make(chan struct{})
		var ww sync.WaitGroup
		for _, w := range workers {
			ww.Add(1)
			go func() {
				defer ww.Done()
				for ctx.Err() == nil {
					w.step()
				}
			}()
		}
		go func() { ww.Wait(); close(done) }()
		<-ctx.Done()
		elapsed += time.Since(began)
		cancel()
		wg.Wait()
		ch.resume()
		// Every call has its own deadline; an op chains a few.
		select {
		case <-done:
		case <-time.After(3 * (filesDeadline + hangGrace)):
			t.Errorf("round %d: %d calls still running %v after the round ended", r, inflight.Load(), 3*(filesDeadline+hangGrace))
			<-done
		}
		for _, w := range workers {
			w.c.closeIdle()
		}
		measured = append(measured, settle(t, e, pidOf, fmt.Sprintf("round %d", r), true))
		t.Logf("round %d: %d calls so far, %d kills, %d stops", r, tl.calls.Load(), ch.total(ch.kills), ch.total(ch.stops))
	}

	report(t, tl, ch, measured, elapsed)
	checkCalls(t, tl)
	checkGrowth(t, measured)
	checkProcesses(t, e)
	checkUploads(t, uploads, filepath.Join(root, "up"))
	select {
	case <-e.Done():
		t.Fatal("envd-init exited")
	default:
	}
}

// settle waits for the tree to be quiet (plugins up, user processes gone,
// the idle heap trim done) and measures every process.
func settle(t *testing.T, e *envdtest.Envd, pidOf func(string) int, label string, trimmed bool) []usage {
	t.Helper()
	if err := e.WaitHealthy(30 * time.Second); err != nil {
		t.Fatalf("%s: %v", label, err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for len(userProcesses(e)) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if trimmed {
		// Every process returns its free heap 3-6 s after its last request.
		time.Sleep(6500 * time.Millisecond)
	}
	var out []usage
	for _, name := range names {
		u, err := sample(pidOf(name))
		if err != nil {
			t.Fatalf("%s: %s: %v", label, name, err)
		}
		out = append(out, u)
	}
	lines := []string{label + ":"}
	for i, u := range out {
		lines = append(lines, fmt.Sprintf("  %-9s %v", names[i], u))
	}
	t.Log(strings.Join(lines, "\n"))
	return out
}

// userProcesses lists what runs below envd-init besides its plugins.
func userProcesses(e *envdtest.Envd) []procInfo {
	var out []procInfo
	for _, p := range descendants(e.Pid()) {
		if p.ppid == e.Pid() && slices.Contains(names[1:], p.comm) {
			continue
		}
		out = append(out, p)
	}
	return out
}

func report(t *testing.T, tl *tally, ch *chaos, measured [][]usage, elapsed time.Duration) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	var ops []string
	for op := range tl.counts {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	lines := []string{fmt.Sprintf("%d calls in %v under load, kills %v, stops %v", tl.calls.Load(), elapsed.Round(time.Second), ch.kills, ch.stops)}
	for _, op := range ops {
		var classes []string
		for class, n := range tl.counts[op] {
			classes = append(classes, fmt.Sprintf("%s=%d", class, n))
		}
		sort.Strings(classes)
		lines = append(lines, fmt.Sprintf("  %-36s %s", op, strings.Join(classes, " ")))
	}
	first, last := measured[0], measured[len(measured)-1]
	lines = append(lines, "resources, start → end:")
	for i, name := range names {
		lines = append(lines, fmt.Sprintf("  %-9s threads %3d → %3d  fds %3d → %3d  PSS %5.1f → %5.1f MiB (pid %d → %d)", name,
			first[i].threads, last[i].threads, first[i].fds, last[i].fds,
			float64(first[i].pssKiB)/1024, float64(last[i].pssKiB)/1024, first[i].pid, last[i].pid))
	}
	t.Log(strings.Join(lines, "\n"))
	for class, notes := range tl.notes {
		if class != classOK && !strings.HasPrefix(class, "status:") {
			t.Logf("examples of %s:\n  %s", class, strings.Join(notes, "\n  "))
		}
	}
}

func checkCalls(t *testing.T, tl *tally) {
	for _, class := range []string{classNoReply, classTruncated} {
		if n := tl.total(class); n > 0 {
			t.Errorf("%d calls got no status (%s)", n, class)
		}
		if n := tl.total(class + classFSKilled); n > 0 {
			t.Logf("%d handed-off calls got no status (%s) because envd-fs was killed (SIGKILL) while they were in flight", n, class)
		}
	}
	if n := tl.total(classHung); n > 0 {
		t.Errorf("%d calls returned more than %v after their deadline", n, hangGrace)
	}
	if n := tl.total(classWrong); n > 0 {
		t.Errorf("%d answers broke the contract", n)
	}
	if tl.total(classOK) == 0 {
		t.Error("no call succeeded")
	}
}

// Growth allowed from the first measured round to the last. Threads: Go
// keeps every OS thread it ever made, so a later burst may add a few; PSS:
// heap noise of a trimmed runtime.
const (
	fdSlack      = 8
	threadSlack  = 8
	pssSlackKiB  = 8 << 10
	pssSlackRate = 0.25
)

func checkGrowth(t *testing.T, measured [][]usage) {
	// The first measured round is the baseline: start-up allocations and
	// the first burst of threads are not growth.
	first, last := measured[1], measured[len(measured)-1]
	for i, name := range names {
		a, b := first[i], last[i]
		if b.fds > a.fds+fdSlack {
			t.Errorf("%s: fds grew %d → %d", name, a.fds, b.fds)
		}
		if b.threads > a.threads+threadSlack {
			t.Errorf("%s: threads grew %d → %d", name, a.threads, b.threads)
		}
		if float64(b.pssKiB) > float64(a.pssKiB)*(1+pssSlackRate)+pssSlackKiB {
			t.Errorf("%s: PSS grew %d → %d KiB", name, a.pssKiB, b.pssKiB)
		}
	}
}

func checkProcesses(t *testing.T, e *envdtest.Envd) {
	deadline := time.Now().Add(15 * time.Second)
	var left []procInfo
	for {
		left = userProcesses(e)
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, p := range left {
		if p.state == 'Z' {
			t.Errorf("zombie: pid %d (%s), parent %d", p.pid, p.comm, p.ppid)
		} else {
			t.Errorf("left running: pid %d (%s) state %c, parent %d", p.pid, p.comm, p.state, p.ppid)
		}
	}
	for _, p := range descendants(e.Pid()) {
		if p.state == 'Z' && slices.Contains(names[1:], p.comm) {
			t.Errorf("zombie plugin: pid %d (%s)", p.pid, p.comm)
		}
	}
}

// checkUploads: every file in the upload tree is one a client sent, whole;
// every upload a client was told succeeded is there.
func checkUploads(t *testing.T, l *uploadLog, dir string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	found := map[string]bool{}
	partial, stray := 0, 0
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		found[path] = true
		want, ok := l.sums[path]
		if !ok {
			stray++
			if stray <= 5 {
				t.Errorf("stray file where uploads went: %s", path)
			}
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("%s: %v", path, err)
			return nil
		}
		if sha(b) != want {
			partial++
			if partial <= 5 {
				t.Errorf("partial upload: %s (%d bytes, acknowledged %v)", path, len(b), l.acked[path])
			}
		}
		return nil
	})
	lost := 0
	for path := range l.acked {
		if !found[path] {
			lost++
			if lost <= 5 {
				t.Errorf("acknowledged upload missing: %s", path)
			}
		}
	}
	t.Logf("uploads: %d sent, %d acknowledged, %d on disk, %d partial, %d stray, %d lost", len(l.sums), len(l.acked), len(found), partial, stray, lost)
}
