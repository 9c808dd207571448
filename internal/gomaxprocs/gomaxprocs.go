// Package gomaxprocs sets how many threads run Go code at once in each
// process of the envd tree; it runs in every process (envd-init and every
// plugin call it at start; envd-fs widens itself for heavy work).
//
// Every process of the tree spends most of a small call waking up: a
// request reaches envd-init, crosses to a plugin and back. With more than
// one P the Go scheduler hands each newly runnable goroutine to another
// thread (futex wake, spinning M, another context switch), so a unary call
// through the tree cost 15 context switches in envd-init and 9 in envd-fs
// on 2 cores; with one P, 7.5 and 5, and about a quarter less CPU per call
// (issue 11). One P also means one mcache and fewer GC workers: the idle
// tree's memory no longer grows with the host's core count. The tree has
// four processes, so a busy sandbox still uses more than one core.
//
// envd-fs runs with one P too (with two, every Stat cost it a wakep, a
// spinning M and a stopm: 15.5 vs 11.5 context switches per call through
// the tree, ~25% more CPU) and widens to Wide only while work that uses
// two threads runs (Widen): a large listing's parallel stat, a big upload.
package gomaxprocs

import (
	"os"
	"runtime"
	"sync"
)

// Default is the GOMAXPROCS of a process of the tree.
const Default = 1

// Wide is the GOMAXPROCS of a process while it does work that can use
// two threads (Widen).
const Wide = 2

var state struct {
	sync.Mutex
	set     bool // Set applied a value (Widen may change it)
	base    int  // the value Set applied
	avail   int  // the CPUs Go found
	widened int  // Widen calls not yet released
}

// Set applies n (Default when 0; never more than the CPUs Go found) unless
// the GOMAXPROCS environment variable chose otherwise (for measurements).
// The variable is read, never set: user processes do not inherit our
// choice.
func Set(n int) {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	if n <= 0 {
		n = Default
	}
	state.Lock()
	defer state.Unlock()
	if !state.set {
		state.avail = runtime.GOMAXPROCS(0)
	}
	state.set, state.base = true, min(n, state.avail)
	runtime.GOMAXPROCS(state.base)
}

// Procs is how many threads work split across goroutines should use:
// Wide where Set narrowed the process (Widen gives them), else the
// process's own GOMAXPROCS.
func Procs() int {
	state.Lock()
	defer state.Unlock()
	if !state.set {
		return runtime.GOMAXPROCS(0)
	}
	return min(max(Wide, state.base), state.avail)
}

// Widen raises GOMAXPROCS to Procs() until release is called (calls nest
// and overlap; the last release restores Set's value). Changing GOMAXPROCS
// stops the world for a few microseconds: only for work that runs far
// longer. Without Set (a standalone plugin, GOMAXPROCS from the
// environment) it changes nothing.
func Widen() (release func()) {
	state.Lock()
	defer state.Unlock()
	if !state.set {
		return func() {}
	}
	state.widened++
	if state.widened == 1 {
		if wide := min(max(Wide, state.base), state.avail); wide != state.base {
			runtime.GOMAXPROCS(wide)
		}
	}
	return sync.OnceFunc(func() {
		state.Lock()
		defer state.Unlock()
		state.widened--
		if state.widened == 0 && runtime.GOMAXPROCS(0) != state.base {
			runtime.GOMAXPROCS(state.base)
		}
	})
}
