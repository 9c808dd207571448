package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/gen/filesystem/filesystemconnect"
	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/gen/process/processconnect"
	"github.com/envd-project/envd/test/envdtest"
)

// side is one envd under measurement: our tree, our standalone plugins,
// or another envd binary (an older build of ours, E2B's envd). Every call
// goes out on a kept-alive connection of the side's own client.
type side struct {
	name    string
	procURL string // process.Process
	fsURL   string // filesystem.Filesystem and /files
	pids    []int  // processes whose CPU and memory count
	proc    processconnect.ProcessClient
	fs      filesystemconnect.FilesystemClient
	http    *http.Client
	stop    func()
}

func newSide(name, procURL, fsURL string, pids []int, stop func()) *side {
	hc := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		MaxIdleConnsPerHost: 4, DisableCompression: true}}
	return &side{name: name, procURL: procURL, fsURL: fsURL, pids: pids, http: hc, stop: stop,
		proc: processconnect.NewProcessClient(hc, procURL),
		fs:   filesystemconnect.NewFilesystemClient(hc, fsURL)}
}

// startTree starts a bundle's envd-init (ours: plugins beside it).
func startBinary(name, bin string, tree bool) (*side, error) {
	port, err := envdtest.FreePort()
	if err != nil {
		return nil, err
	}
	args := []string{"--isnotfc", "--port", strconv.Itoa(port)}
	if tree {
		args = append(args, "--no-cgroups")
	}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop := func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }
	u := fmt.Sprintf("http://127.0.0.1:%d", port)
	s := newSide(name, u, u, []int{cmd.Process.Pid}, stop)
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := s.opStat(context.Background(), "/")
		if err == nil && (!tree || len(envdtest.Children(cmd.Process.Pid)) >= 3) {
			break
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("%s did not come up: %v\n%s", bin, err, log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if tree {
		s.pids = append(s.pids, envdtest.Children(cmd.Process.Pid)...)
	}
	return s, nil
}

// startStandalone runs envd-proc and envd-fs --standalone side by side:
// what the tree would cost without envd-init's hop.
func startStandalone() (*side, error) {
	procURL, stopProc, err := standalone("envd-proc")
	if err != nil {
		return nil, err
	}
	fsURL, stopFS, err := standalone("envd-fs")
	if err != nil {
		stopProc()
		return nil, err
	}
	var pids []int
	for _, u := range []string{procURL, fsURL} {
		pids = append(pids, pidListening(u))
	}
	return newSide("standalone", procURL, fsURL, pids, func() { stopFS(); stopProc() }), nil
}

// pidListening finds the process serving url's TCP port (a child of ours).
func pidListening(url string) int {
	port := url[strings.LastIndex(url, ":")+1:]
	for _, pid := range envdtest.Children(os.Getpid()) {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(cmdline), "\x00"+port+"\x00") {
			return pid
		}
	}
	return 0
}

func user[T any](m *T) *connect.Request[T] {
	r := connect.NewRequest(m)
	r.Header().Set("Authorization", envdtest.BasicUser("root"))
	return r
}

func (s *side) opStat(ctx context.Context, path string) error {
	_, err := s.fs.Stat(ctx, user(&fspb.StatRequest{Path: path}))
	return err
}

// cpuNs is the CPU time (user + system) the side's processes used so far,
// all threads, in ns (schedstat: exact, where /proc/pid/stat counts ticks).
func (s *side) cpuNs() int64 {
	var total int64
	for _, pid := range s.pids {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
		for _, t := range tasks {
			b, err := os.ReadFile(t)
			if err != nil {
				continue
			}
			f := strings.Fields(string(b))
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				total += n
			}
		}
	}
	return total
}

// pssMiB is the side's PSS (shared pages counted once across its processes).
func (s *side) pssMiB() float64 {
	total := 0.0
	for _, v := range s.pssByProcess() {
		total += v
	}
	return total
}

// pssByProcess is each process's PSS in MiB, by its name (where the
// side's memory sits: issue 11 asks where a peak comes from).
func (s *side) pssByProcess() map[string]float64 {
	out := map[string]float64{}
	for _, pid := range s.pids {
		kib, err := pssKiB(pid)
		if err != nil {
			continue
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		out[strings.TrimSpace(string(comm))] += float64(kib) / 1024
	}
	return out
}

// op is one kind of call in the mix.
type op struct {
	name string
	n    int // calls per round
	fn   func(ctx context.Context, s *side, i int) error
}

type fixture struct {
	dir, small, big, list string
	bigList               string // 10,000 entries
	smallData             []byte
	bigSize               int64
}

func newFixture(bigSize int64) (*fixture, error) {
	dir, err := os.MkdirTemp("/var/tmp", "envd-compare-")
	if err != nil {
		return nil, err
	}
	f := &fixture{dir: dir, small: filepath.Join(dir, "small"), big: filepath.Join(dir, "big"), list: filepath.Join(dir, "list"), bigSize: bigSize}
	f.smallData = make([]byte, 4096)
	_, _ = rand.Read(f.smallData)
	if err := os.WriteFile(f.small, f.smallData, 0o644); err != nil {
		return nil, err
	}
	big := make([]byte, bigSize)
	_, _ = rand.Read(big)
	if err := os.WriteFile(f.big, big, 0o644); err != nil {
		return nil, err
	}
	if err := os.Mkdir(f.list, 0o755); err != nil {
		return nil, err
	}
	for i := range 10 {
		if err := os.WriteFile(filepath.Join(f.list, fmt.Sprintf("f%d", i)), []byte("x"), 0o644); err != nil {
			return nil, err
		}
	}
	// A long listing joins the mix only when asked for
	// (ENVD_BENCH_BIGLIST=1): it moves the mix's peak memory.
	if os.Getenv("ENVD_BENCH_BIGLIST") == "" {
		return f, nil
	}
	f.bigList = filepath.Join(dir, "biglist")
	if err := os.Mkdir(f.bigList, 0o755); err != nil {
		return nil, err
	}
	for i := range 10000 {
		if err := os.WriteFile(filepath.Join(f.bigList, fmt.Sprintf("file-%05d", i)), nil, 0o644); err != nil {
			return nil, err
		}
	}
	return f, nil
}

func (s *side) get(ctx context.Context, path string, want int64) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.fsURL+"/files?username=root&path="+url.QueryEscape(path), nil)
	res, err := s.http.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, res.Body, make([]byte, 256<<10))
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK || n != want {
		return fmt.Errorf("GET: %d, %d bytes", res.StatusCode, n)
	}
	return nil
}

func (s *side) post(ctx context.Context, path string, body io.Reader, size int64) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.fsURL+"/files?username=root&path="+url.QueryEscape(path), body)
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	res, err := s.http.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("POST: %d %s", res.StatusCode, b)
	}
	return nil
}

func mixOps(f *fixture, small int, withBig bool) []op {
	ops := []op{
		{"Start /bin/true", small / 2, func(ctx context.Context, s *side, _ int) error {
			stream, err := s.proc.Start(ctx, user(&procpb.StartRequest{Process: &procpb.ProcessConfig{Cmd: "/bin/true"}}))
			if err != nil {
				return err
			}
			defer stream.Close()
			for stream.Receive() {
			}
			return stream.Err()
		}},
		{"Stat", small, func(ctx context.Context, s *side, _ int) error { return s.opStat(ctx, f.small) }},
		{"Stat missing (exists)", small, func(ctx context.Context, s *side, _ int) error {
			if err := s.opStat(ctx, f.small+".missing"); connect.CodeOf(err) != connect.CodeNotFound {
				return fmt.Errorf("stat of a missing path: %v", err)
			}
			return nil
		}},
		{"ListDir 10 entries", small, func(ctx context.Context, s *side, _ int) error {
			res, err := s.fs.ListDir(ctx, user(&fspb.ListDirRequest{Path: f.list, Depth: 1}))
			if err == nil && len(res.Msg.GetEntries()) != 10 {
				err = fmt.Errorf("ListDir: %d entries", len(res.Msg.GetEntries()))
			}
			return err
		}},
		{"GET /files 4 KiB", small, func(ctx context.Context, s *side, _ int) error { return s.get(ctx, f.small, 4096) }},
		{"POST /files 4 KiB", small, func(ctx context.Context, s *side, i int) error {
			return s.post(ctx, filepath.Join(f.dir, fmt.Sprintf("up-%s-%d", s.name, i%8)), bytes.NewReader(f.smallData), 4096)
		}},
	}
	if withBig {
		label := fmt.Sprintf("%d MiB", f.bigSize>>20)
		if f.bigList != "" {
			ops = append(ops, op{"ListDir 10,000 entries", max(small/20, 1), func(ctx context.Context, s *side, _ int) error {
				res, err := s.fs.ListDir(ctx, user(&fspb.ListDirRequest{Path: f.bigList, Depth: 1}))
				if err == nil && len(res.Msg.GetEntries()) != 10000 {
					err = fmt.Errorf("ListDir: %d entries", len(res.Msg.GetEntries()))
				}
				return err
			}})
		}
		ops = append(ops,
			op{"GET /files " + label, 1, func(ctx context.Context, s *side, _ int) error { return s.get(ctx, f.big, f.bigSize) }},
			op{"POST /files " + label, 1, func(ctx context.Context, s *side, _ int) error {
				src, err := os.Open(f.big)
				if err != nil {
					return err
				}
				defer src.Close()
				return s.post(ctx, filepath.Join(f.dir, "bigup-"+s.name), src, f.bigSize)
			}})
	}
	return ops
}

// result gathers one side's figures for one op.
type result struct {
	lat   []time.Duration
	cpuNs int64
	calls int
}

// memSampler records the peak PSS of the sides while the mix runs.
type memSampler struct {
	mu   sync.Mutex
	peak map[*side]float64
	// procPeak is each process's own peak (not at the same instant).
	procPeak map[*side]map[string]float64
	stop     chan struct{}
	done     chan struct{}
}

func sampleMemory(sides []*side) *memSampler {
	m := &memSampler{peak: map[*side]float64{}, procPeak: map[*side]map[string]float64{}, stop: make(chan struct{}), done: make(chan struct{})}
	for _, s := range sides {
		m.procPeak[s] = map[string]float64{}
	}
	go func() {
		defer close(m.done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			for _, s := range sides {
				byProc := s.pssByProcess()
				p := 0.0
				m.mu.Lock()
				for name, v := range byProc {
					p += v
					m.procPeak[s][name] = max(m.procPeak[s][name], v)
				}
				m.peak[s] = max(m.peak[s], p)
				m.mu.Unlock()
			}
			select {
			case <-m.stop:
				return
			case <-t.C:
			}
		}
	}()
	return m
}

func (m *memSampler) end() map[*side]float64 {
	close(m.stop)
	<-m.done
	return m.peak
}

// runMix runs rounds of the op mix on every side, alternating which side
// goes first, and returns per side and op the latencies and CPU.
func runMix(sides []*side, ops []op, rounds int) (map[*side]map[string]*result, error) {
	out := map[*side]map[string]*result{}
	for _, s := range sides {
		out[s] = map[string]*result{}
		for _, o := range ops {
			out[s][o.name] = &result{}
		}
	}
	ctx := context.Background()
	for r := range rounds {
		for k := range sides {
			s := sides[k]
			if r%2 == 1 {
				s = sides[len(sides)-1-k]
			}
			for _, o := range ops {
				res := out[s][o.name]
				// Let the previous op's deferred work (GC, trims) land
				// before the CPU count starts.
				time.Sleep(20 * time.Millisecond)
				c0 := s.cpuNs()
				for i := range o.n {
					t0 := time.Now()
					if err := o.fn(ctx, s, i); err != nil {
						return nil, fmt.Errorf("%s on %s: %w", o.name, s.name, err)
					}
					res.lat = append(res.lat, time.Since(t0))
				}
				res.cpuNs += s.cpuNs() - c0
				res.calls += o.n
			}
		}
	}
	return out, nil
}

// benchCompare runs the op mix side by side on our tree and each other
// side, and prints the table.
func benchCompare(other string, short bool) error {
	small, rounds, bigSize := 100, 6, int64(100<<20)
	if short {
		small, rounds, bigSize = 10, 2, 1<<20
	}
	f, err := newFixture(bigSize)
	if err != nil {
		return err
	}
	defer os.RemoveAll(f.dir)
	bundle, err := envdtest.Bundle()
	if err != nil {
		return err
	}
	tree, err := startBinary("tree", filepath.Join(bundle, "envd-init"), true)
	if err != nil {
		return err
	}
	defer tree.stop()
	var o *side
	switch {
	case other == "standalone":
		o, err = startStandalone()
	case other == "":
		// Smoke mode: our own build against itself.
		o, err = startBinary("same-build", filepath.Join(bundle, "envd-init"), true)
	default:
		_, statErr := os.Stat(filepath.Join(filepath.Dir(other), "envd-fs"))
		o, err = startBinary(filepath.Base(filepath.Dir(other))+"/"+filepath.Base(other), other, statErr == nil)
	}
	if err != nil {
		return err
	}
	defer o.stop()
	sides := []*side{tree, o}
	ops := mixOps(f, small, true)
	// Warm up both (page cache, connections, lazily started plugins).
	if _, err := runMix(sides, mixOps(f, 4, true), 1); err != nil {
		return err
	}
	if short {
		time.Sleep(time.Second)
	} else {
		time.Sleep(8 * time.Second) // both idle: trims done
	}
	idle := map[*side]float64{}
	for _, s := range sides {
		idle[s] = s.pssMiB()
	}
	idleProc := map[*side]map[string]float64{}
	for _, s := range sides {
		idleProc[s] = s.pssByProcess()
	}
	mem := sampleMemory(sides)
	res, err := runMix(sides, ops, rounds)
	peak := mem.end()
	if err != nil {
		return err
	}
	settle := 10 * time.Second
	if short {
		settle = time.Second
	}
	time.Sleep(settle)
	settled := map[*side]float64{}
	settledProc := map[*side]map[string]float64{}
	for _, s := range sides {
		settledProc[s] = s.pssByProcess()
		for _, v := range settledProc[s] {
			settled[s] += v
		}
	}
	printCompare(tree, o, ops, res, idle, peak, settled, settle)
	fmt.Printf("\nper process (PSS, MiB): idle / own peak during the mix / %s after\n", settle)
	for _, s := range sides {
		var names []string
		for name := range mem.procPeak[s] {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			fmt.Printf("  %-12s %-10s %5.1f / %5.1f / %5.1f\n", s.name, name, idleProc[s][name], mem.procPeak[s][name], settledProc[s][name])
		}
	}
	return nil
}

func printCompare(a, b *side, ops []op, res map[*side]map[string]*result, idle, peak, settled map[*side]float64, settle time.Duration) {
	fmt.Printf("\n%s (A) vs %s (B): p50 latency and CPU per call (sum over each side's processes), %d-call rounds alternating\n\n", a.name, b.name, ops[1].n)
	fmt.Printf("| %-24s | %10s | %10s | %7s | %10s | %10s | %7s | %9s |\n", "op", "p50 A", "p50 B", "A/B", "CPU/call A", "CPU/call B", "A/B", "p50 A-B")
	fmt.Printf("|%s|%s|%s|%s|%s|%s|%s|%s|\n", strings.Repeat("-", 26), strings.Repeat("-", 12), strings.Repeat("-", 12), strings.Repeat("-", 9), strings.Repeat("-", 12), strings.Repeat("-", 12), strings.Repeat("-", 9), strings.Repeat("-", 11))
	for _, o := range ops {
		ra, rb := res[a][o.name], res[b][o.name]
		pa, pb := median(ra.lat), median(rb.lat)
		ca := time.Duration(ra.cpuNs / int64(ra.calls))
		cb := time.Duration(rb.cpuNs / int64(rb.calls))
		fmt.Printf("| %-24s | %10s | %10s | %6.2fx | %10s | %10s | %6.2fx | %9s |\n", o.name,
			dur(pa), dur(pb), float64(pa)/float64(pb), dur(ca), dur(cb), float64(ca)/float64(max(cb, 1)), dur(pa-pb))
	}
	fmt.Printf("\n| memory (PSS, MiB)         | %8s | %8s | %7s |\n|---|---|---|---|\n", "A", "B", "A/B")
	for _, m := range []struct {
		name string
		v    map[*side]float64
	}{{"idle (before the mix)", idle}, {"peak during the mix", peak}, {fmt.Sprintf("%s after the mix", settle), settled}} {
		fmt.Printf("| %-25s | %8.1f | %8.1f | %6.2fx |\n", m.name, m.v[a], m.v[b], m.v[a]/m.v[b])
	}
}

func dur(d time.Duration) string {
	switch {
	case d.Abs() >= 10*time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.3fms", float64(d)/1e6)
	}
}

var errUsage = errors.New("usage: bench [compare [-short] [OTHER]] | bench conformance [RUNS] | bench [-short]")
