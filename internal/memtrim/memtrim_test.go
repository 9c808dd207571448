package memtrim

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// In a static executable (what envd ships) the read-only pages are
// unmapped, and the process goes on running (they fault back in from the
// page cache when touched). The test binary itself may be dynamically
// linked (-race), so a static one is built for this.
func TestShrinkExecutableMappings(t *testing.T) {
	if _, err := os.Stat("/proc/self/smaps_rollup"); err != nil {
		t.Skipf("no smaps_rollup: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "shrink")
	build := exec.Command("go", "build", "-o", bin, "./testdata/shrink")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	f := strings.Fields(string(out))
	if len(f) != 3 || f[2] != "xxx" {
		t.Fatalf("output %q", out)
	}
	before, err1 := strconv.Atoi(f[0])
	after, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || after >= before {
		t.Fatalf("file-backed PSS %s kB -> %s kB: nothing was unmapped", f[0], f[1])
	}
}

// A dynamically linked executable (a loader relocated it; RELRO pages are
// private copies) is left alone.
func TestDynamicExecutableIsNotTrimmed(t *testing.T) {
	for _, p := range []string{"/bin/sh", "/bin/true"} {
		if ok, err := isFixedAddressELF(p); err != nil || ok {
			t.Errorf("%s: eligible=%v err=%v", p, ok, err)
		}
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
