package memtrim

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func pssFileKiB(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps_rollup")
	if err != nil {
		t.Skipf("no smaps_rollup: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Pss_File:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	t.Skip("no Pss_File in smaps_rollup")
	return 0
}

// The executable's read-only pages are unmapped, and the process goes on
// running (they fault back in from the page cache when touched).
func TestShrinkExecutableMappings(t *testing.T) {
	before := pssFileKiB(t)
	if err := ShrinkExecutableMappings(); err != nil {
		t.Fatal(err)
	}
	after := pssFileKiB(t)
	if after >= before {
		t.Fatalf("file-backed PSS %d kB -> %d kB: nothing was unmapped", before, after)
	}
	if strings.Repeat("x", 3) != "xxx" { // touches code again
		t.Fatal("unreachable")
	}
}

func TestTrimAfterIdleOnly(t *testing.T) {
	tr := New(20 * time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go tr.Run(ctx)
	// Busy: a request every few ms keeps the trim away; then idle.
	for i := 0; i < 10; i++ {
		tr.Touch()
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	if err := ShrinkExecutableMappings(); err != nil {
		t.Fatal(err)
	}
}
