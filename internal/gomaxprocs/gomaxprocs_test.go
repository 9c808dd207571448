package gomaxprocs

import (
	"os"
	"runtime"
	"testing"
)

// Widen raises GOMAXPROCS for as long as any caller holds it, and the last
// release brings back what Set chose.
func TestWidenNestsAndRestores(t *testing.T) {
	if os.Getenv("GOMAXPROCS") != "" {
		t.Skip("GOMAXPROCS set in the environment: Set and Widen leave it alone")
	}
	avail := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(avail)
	Set(1)
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Fatalf("after Set(1): GOMAXPROCS %d", got)
	}
	want := min(Wide, avail)
	if got := Procs(); got != want {
		t.Fatalf("Procs() = %d, want %d", got, want)
	}
	a := Widen()
	b := Widen()
	if got := runtime.GOMAXPROCS(0); got != want {
		t.Fatalf("widened: GOMAXPROCS %d, want %d", got, want)
	}
	a()
	a() // a second call of the same release changes nothing
	if got := runtime.GOMAXPROCS(0); got != want {
		t.Fatalf("one of two released: GOMAXPROCS %d, want %d", got, want)
	}
	b()
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Fatalf("all released: GOMAXPROCS %d, want 1", got)
	}
}
