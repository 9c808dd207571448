// Command bench measures the envd tree against its limits and prints a table
// (make bench). Test-only: it runs in no envd process, it starts the bundle.
// Ratios are taken inside one run: the machine is shared and noisy, so
// absolute figures move between runs while ratios hold.
package main

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// row is one line of the table.
type row struct {
	name  string
	value string
	limit string
	ok    string // "ok", "OVER", or "" when there is no limit
}

var rows []row

// short is the smoke mode (-short): every section runs a few calls and no
// figure means anything; CI checks that the bench still runs.
var short bool

func add(name, value, limit string, pass *bool) {
	ok := ""
	if pass != nil {
		ok = "ok"
		if !*pass {
			ok = "OVER"
		}
	}
	rows = append(rows, row{name, value, limit, ok})
}

func check(b bool) *bool { return &b }

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s)-1) * p)
	return s[i]
}

func main() {
	if floorRole() {
		return
	}
	args := os.Args[1:]
	shortMode := len(args) > 0 && args[0] == "-short"
	if shortMode {
		args = args[1:]
	}
	if len(args) > 0 && args[0] == "compare" {
		args = args[1:]
		if len(args) > 0 && args[0] == "-short" {
			shortMode, args = true, args[1:]
		}
		other := ""
		if len(args) > 0 {
			other = args[0]
		}
		if err := benchCompare(other, shortMode); err != nil {
			fmt.Fprintln(os.Stderr, "compare:", err)
			os.Exit(1)
		}
		return
	}
	if len(args) > 0 && args[0] == "conformance" {
		runs := 2
		if len(args) > 1 {
			n, err := strconv.Atoi(args[1])
			if err != nil || n < 1 {
				fmt.Fprintln(os.Stderr, errUsage)
				os.Exit(2)
			}
			runs = n
		}
		if err := benchConformance(runs); err != nil {
			fmt.Fprintln(os.Stderr, "conformance:", err)
			os.Exit(1)
		}
		return
	}
	if len(args) > 0 {
		fmt.Fprintln(os.Stderr, errUsage)
		os.Exit(2)
	}
	short = shortMode
	if short {
		transferSize, startRuns = 1<<20, 10
	}
	sections := []struct {
		name string
		fn   func() error
	}{
		{"hop floor", benchFloor},
		{"process", benchProcess},
		{"memory", benchMemory},
		{"cold start", benchColdStart},
		{"files", benchFiles},
		{"big upload", benchBigUpload},
		{"host", benchHost},
		{"survive", benchSurvive},
	}
	only := os.Getenv("BENCH_ONLY")
	failed := false
	for _, s := range sections {
		if only != "" && !strings.Contains(only, s.name) {
			continue
		}
		if err := s.fn(); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", s.name, err)
			add(s.name, "error: "+err.Error(), "", nil)
			failed = true
		}
	}
	printTable()
	if failed {
		os.Exit(1)
	}
}

func printTable() {
	w := [3]int{len("measure"), len("value"), len("limit")}
	for _, r := range rows {
		w[0], w[1], w[2] = max(w[0], len(r.name)), max(w[1], len(r.value)), max(w[2], len(r.limit))
	}
	line := func(a, b, c, d string) {
		fmt.Printf("| %-*s | %*s | %-*s | %-4s |\n", w[0], a, w[1], b, w[2], c, d)
	}
	line("measure", "value", "limit", "")
	fmt.Printf("|%s|%s|%s|------|\n", strings.Repeat("-", w[0]+2), strings.Repeat("-", w[1]+2), strings.Repeat("-", w[2]+2))
	for _, r := range rows {
		line(r.name, r.value, r.limit, r.ok)
	}
}
