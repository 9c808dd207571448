// Package gomaxprocs sets how many threads run Go code at once in each
// process of the envd tree; it runs in every process (envd-init and every
// plugin call it at start).
//
// Every process of the tree spends most of a small call waking up: a
// request reaches envd-init, crosses to a plugin and back. With more than
// one P the Go scheduler hands each newly runnable goroutine to another
// thread (futex wake, spinning M, another context switch), so a unary call
// through the tree cost 15 context switches in envd-init and 9 in envd-fs
// on 2 cores; with one P, 7.5 and 5, and about a quarter less CPU per call
// (issue 11). One P also means one mcache and fewer GC workers: the idle
// tree's memory no longer grows with the host's core count. The tree has
// four processes, so a busy sandbox still uses more than one core; envd-fs
// takes two, so that parsing a multipart upload can overlap its reads and
// writes.
package gomaxprocs

import (
	"os"
	"runtime"
)

// Default is the GOMAXPROCS of a process of the tree.
const Default = 1

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
	runtime.GOMAXPROCS(min(n, runtime.GOMAXPROCS(0)))
}
