// Package memtrim hands a process's free heap and its executable's untouched
// pages back to the OS once it goes idle after a burst of work; it runs in
// every process. Thousands of VMs run the envd tree; Go's background scavenger
// returns memory only slowly, and an idle envd should cost as little as it did
// before its last burst (docs/architecture.md: a host went from 12.4 to 4.3 MiB
// RSS after a burst).
package memtrim

import (
	"context"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
)

// Trimmer counts requests and trims after Idle without a new one.
type Trimmer struct {
	Idle time.Duration
	seq  atomic.Uint64
}

// New returns a trimmer that trims after idle of that long.
func New(idle time.Duration) *Trimmer { return &Trimmer{Idle: idle} }

// Touch records a request.
func (t *Trimmer) Touch() { t.seq.Add(1) }

// Middleware counts every HTTP request.
func (t *Trimmer) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Touch()
		next.ServeHTTP(w, r)
	})
}

// UnaryInterceptor counts every gRPC call.
func (t *Trimmer) UnaryInterceptor(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	t.Touch()
	return h(ctx, req)
}

// StreamInterceptor counts every gRPC stream.
func (t *Trimmer) StreamInterceptor(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	t.Touch()
	return h(srv, ss)
}

// Run trims once after start-up and once after each burst of requests,
// when no new request came for Idle. A long stream (a shell) counts once,
// at its start: its garbage is trimmed like any other.
func (t *Trimmer) Run(ctx context.Context) {
	tick := time.NewTicker(t.Idle)
	defer tick.Stop()
	trimmed := ^uint64(0) // nothing trimmed yet: trim the start-up garbage
	last := t.seq.Load()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := t.seq.Load()
		if now == last && now != trimmed {
			// sync.Pool contents (buffers of gRPC, connect, net/http, our
			// proxies) survive one GC in the pools' victim cache: the
			// first GC moves them there, FreeOSMemory's frees them and
			// returns their pages with the rest of the free heap.
			runtime.GC()
			debug.FreeOSMemory()
			// Code and tables used only at start-up or by the last burst
			// stay mapped otherwise; the page cache keeps them for the
			// next burst, which maps back what it touches.
			_ = ShrinkExecutableMappings()
			trimmed = now
		}
		last = now
	}
}

// GCPercent is the GOGC of every process of the tree. Its heaps are tiny
// (about 1 MiB live between calls), so the 4 MiB minimum heap goal of the
// default GOGC=100 is most of what a burst adds to each process; at 50 the
// goal is 2 MiB and a GC of such a heap costs ~0.1 ms, every few hundred
// KiB of garbage: the bench's mix peaked at 28.5 instead of 31.7 MiB PSS
// (issue 11) with no measurable CPU per call.
const GCPercent = 50

// SetGC applies GCPercent unless the GOGC environment variable chose
// otherwise (for measurements). The variable is read, never set: user
// processes do not inherit our choice.
func SetGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(GCPercent)
	}
}
