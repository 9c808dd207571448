package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/envd-project/envd/test/envdtest"
)

// memSample is the tree's PSS by process name at one instant.
type memSample struct {
	at     time.Time
	byProc map[string]float64
}

func (m memSample) total() float64 {
	t := 0.0
	for _, v := range m.byProc {
		t += v
	}
	return t
}

// treePSS is envd-init's and its plugins' PSS (MiB) by name; user
// processes (envd-proc's children) are not the tree's.
func treePSS(initPid int) map[string]float64 {
	out := map[string]float64{}
	for _, pid := range append([]int{initPid}, envdtest.Children(initPid)...) {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		name := strings.TrimSpace(string(comm))
		if err != nil || !strings.HasPrefix(name, "envd-") {
			continue
		}
		if kib, err := pssKiB(pid); err == nil {
			out[name] += float64(kib) / 1024
		}
	}
	return out
}

var (
	upLine    = regexp.MustCompile(`^conformance: envd-init \(pid (\d+),`)
	startLine = regexp.MustCompile(`^conformance: run (\d+) of \d+ starts`)
	endLine   = regexp.MustCompile(`^conformance: run (\d+) of \d+ ends`)
)

// benchConformance runs the JS SDK conformance suite (conformance/run.sh)
// runs times against one envd tree, sampling the tree's PSS every 100 ms,
// and prints per run: the idle tree before it, its peak, and the tree 10 s
// after it ended (issue 11: ≤ 32 MiB peak, < 20 MiB 10 s after, no growth
// from run to run). Needs root and port 49983 of its own network
// namespace (make bench-conformance makes one).
func benchConformance(runs int) error {
	const settle = 10 * time.Second
	bundle, err := envdtest.Bundle()
	if err != nil {
		return err
	}
	script, err := filepath.Abs("conformance/run.sh")
	if err != nil {
		return err
	}
	cmd := exec.Command("bash", script)
	cmd.Env = append(os.Environ(), "ENVD_BIN="+filepath.Join(bundle, "envd-init"),
		fmt.Sprintf("CONFORMANCE_RUNS=%d", runs),
		fmt.Sprintf("CONFORMANCE_PAUSE=%d", int(settle/time.Second)+2))
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}

	var (
		mu      sync.Mutex
		samples []memSample
		starts  = map[int]time.Time{}
		ends    = map[int]time.Time{}
		stop    = make(chan struct{})
		done    = make(chan struct{})
	)
	sample := func(initPid int) {
		defer close(done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			s := memSample{at: time.Now(), byProc: treePSS(initPid)}
			if len(s.byProc) > 0 {
				mu.Lock()
				samples = append(samples, s)
				mu.Unlock()
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}
	started := false
	sc := bufio.NewScanner(io.TeeReader(out, os.Stdout))
	for sc.Scan() {
		line := sc.Text()
		now := time.Now()
		if m := upLine.FindStringSubmatch(line); m != nil && !started {
			pid, _ := strconv.Atoi(m[1])
			started = true
			go sample(pid)
		}
		mu.Lock()
		if m := startLine.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[1])
			starts[n] = now
		}
		if m := endLine.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[1])
			ends[n] = now
		}
		mu.Unlock()
	}
	werr := cmd.Wait()
	if started {
		close(stop)
		<-done
	}
	if !started {
		return fmt.Errorf("run.sh never started envd-init: %v", werr)
	}

	// at is the last sample taken at or before t; peak the largest tree
	// total in [from, to) and each process's own largest figure there.
	at := func(t time.Time) memSample {
		var best memSample
		for _, s := range samples {
			if s.at.After(t) {
				break
			}
			best = s
		}
		return best
	}
	peak := func(from, to time.Time) memSample {
		p := memSample{byProc: map[string]float64{}}
		tot := 0.0
		for _, s := range samples {
			if s.at.Before(from) || !s.at.Before(to) {
				continue
			}
			tot = max(tot, s.total())
			for k, v := range s.byProc {
				p.byProc[k] = max(p.byProc[k], v)
			}
		}
		p.byProc["(tree at once)"] = tot
		return p
	}
	names := map[string]bool{}
	for _, s := range samples {
		for k := range s.byProc {
			names[k] = true
		}
	}
	var procs []string
	for k := range names {
		procs = append(procs, k)
	}
	slices.Sort(procs)

	fmt.Printf("\nJS SDK conformance suite, %d runs against one tree: PSS in MiB (sampled every 100 ms; a process's peak is its own, not at the tree's peak instant)\n\n", runs)
	fmt.Printf("| %-22s | %6s |", "", "tree")
	for _, p := range procs {
		fmt.Printf(" %9s |", p)
	}
	fmt.Printf("\n|%s|--------|%s\n", strings.Repeat("-", 24), strings.Repeat("-----------|", len(procs)))
	printRow := func(label string, s memSample, total float64) {
		fmt.Printf("| %-22s | %6.1f |", label, total)
		for _, p := range procs {
			fmt.Printf(" %9.1f |", s.byProc[p])
		}
		fmt.Println()
	}
	for n := 1; n <= runs; n++ {
		st, okS := starts[n]
		en, okE := ends[n]
		if !okS || !okE {
			break
		}
		idle := at(st)
		printRow(fmt.Sprintf("idle before run %d", n), idle, idle.total())
		p := peak(st, en)
		printRow(fmt.Sprintf("peak during run %d", n), p, p.byProc["(tree at once)"])
		after := at(en.Add(settle))
		printRow(fmt.Sprintf("%v after run %d", settle, n), after, after.total())
		fmt.Printf("  run %d took %v\n", n, en.Sub(st).Round(time.Second))
	}
	if werr != nil {
		return fmt.Errorf("conformance suite failed (its figures above still count): %w", werr)
	}
	return nil
}
