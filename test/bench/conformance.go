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

// memSample is the tree's PSS by process name at one instant, and the
// anonymous part of it (the rest is the executable's pages, shared).
type memSample struct {
	at     time.Time
	byProc map[string]float64
	anon   map[string]float64
}

func (m memSample) total() float64 {
	t := 0.0
	for _, v := range m.byProc {
		t += v
	}
	return t
}

// treePSS is envd-init's and its plugins' PSS (MiB) by name, and its
// anonymous part; user processes (envd-proc's children) are not the tree's.
func treePSS(initPid int) (out, anon map[string]float64) {
	out, anon = map[string]float64{}, map[string]float64{}
	for _, pid := range append([]int{initPid}, envdtest.Children(initPid)...) {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		name := strings.TrimSpace(string(comm))
		if err != nil || !strings.HasPrefix(name, "envd-") {
			continue
		}
		if kib, err := pssKiB(pid); err == nil {
			out[name] += float64(kib) / 1024
		}
		if kib, err := procKiB(fmt.Sprintf("/proc/%d/smaps_rollup", pid), "Pss_Anon"); err == nil {
			anon[name] += float64(kib) / 1024
		}
	}
	return out, anon
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
			s := memSample{at: time.Now()}
			s.byProc, s.anon = treePSS(initPid)
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
	// peak is each process's own largest figure in [from, to) and the
	// sample where the tree's total was largest.
	peak := func(from, to time.Time) (own, atPeak memSample) {
		own = memSample{byProc: map[string]float64{}}
		for _, s := range samples {
			if s.at.Before(from) || !s.at.Before(to) {
				continue
			}
			if atPeak.byProc == nil || s.total() > atPeak.total() {
				atPeak = s
			}
			for k, v := range s.byProc {
				own.byProc[k] = max(own.byProc[k], v)
			}
		}
		return own, atPeak
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

	fmt.Printf("\nJS SDK conformance suite, %d runs against one tree: PSS in MiB, sampled every 100 ms (the peak row is the instant of the tree's peak; the anonymous rows leave out the executable's shared pages)\n\n", runs)
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
	anonRow := func(label string, s memSample) {
		tot := 0.0
		for _, v := range s.anon {
			tot += v
		}
		printRow(label, memSample{byProc: s.anon}, tot)
	}
	for n := 1; n <= runs; n++ {
		st, okS := starts[n]
		en, okE := ends[n]
		if !okS || !okE {
			break
		}
		idle := at(st)
		printRow(fmt.Sprintf("idle before run %d", n), idle, idle.total())
		anonRow("  of it anonymous", idle)
		own, p := peak(st, en)
		printRow(fmt.Sprintf("peak during run %d", n), p, p.total())
		anonRow("  of it anonymous", p)
		printRow("  each one's own peak", own, 0)
		after := at(en.Add(settle))
		printRow(fmt.Sprintf("%v after run %d", settle, n), after, after.total())
		anonRow("  of it anonymous", after)
		fmt.Printf("  run %d took %v\n", n, en.Sub(st).Round(time.Second))
	}
	if werr != nil {
		return fmt.Errorf("conformance suite failed (its figures above still count): %w", werr)
	}
	return nil
}
