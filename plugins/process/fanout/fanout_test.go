package fanout

import (
	"sync"
	"testing"
	"time"
)

func drain[T any](s *Sub[T]) []T {
	var out []T
	for {
		v, ok, done := s.Next()
		if ok {
			out = append(out, v)
			continue
		}
		if done {
			return out
		}
		<-s.Ready()
	}
}

// next waits for one chunk.
func next[T any](s *Sub[T]) T {
	for {
		if v, ok, _ := s.Next(); ok {
			return v
		}
		<-s.Ready()
	}
}

// queued is how many chunks wait in s.
func queued[T any](s *Sub[T]) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.q)
}

func one(int) int { return 1 }

func entries(n int) Limits { return Limits{Bytes: 1 << 30, Entries: n} }

func TestNoSubscriberDrops(t *testing.T) {
	h := New[int](DropSubscriber, entries(4), one, nil)
	if h.HasSubscribers() {
		t.Fatal("fresh hub has subscribers")
	}
	if n := h.Publish(1); n != 0 {
		t.Fatalf("Publish with no subscriber queued %d", n)
	}
	s := h.Subscribe()
	h.Publish(2)
	h.Close()
	if got := drain(s); len(got) != 1 || got[0] != 2 {
		t.Fatalf("got %v, want only the value published after Subscribe", got)
	}
}

func TestCloseDeliversQueuedThenCloses(t *testing.T) {
	h := New[int](DropSubscriber, entries(8), one, nil)
	a, b := h.Subscribe(), h.Subscribe()
	for i := range 5 {
		if n := h.Publish(i); n != 2 {
			t.Fatalf("Publish queued %d, want 2", n)
		}
	}
	h.Close()
	h.Close() // idempotent
	h.Publish(99)
	for _, s := range []*Sub[int]{a, b} {
		got := drain(s)
		if len(got) != 5 || s.Lagged() {
			t.Fatalf("got %v lagged %v", got, s.Lagged())
		}
	}
	late := h.Subscribe()
	if got := drain(late); len(got) != 0 {
		t.Fatalf("late subscriber got %v", got)
	}
}

// A stalled subscriber never blocks Publish; under DropSubscriber it is
// cut off and learns why, while others keep everything.
func TestStalledSubscriberCutOff(t *testing.T) {
	h := New[int](DropSubscriber, entries(4), one, nil)
	stalled := h.Subscribe()
	fast := h.Subscribe()
	var got []int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		got = drain(fast)
	}()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 1000 {
			h.Publish(i)
			// Let the fast reader keep up; the stalled one never reads.
			for queued(fast) > 2 {
				time.Sleep(time.Microsecond)
			}
		}
		h.Close()
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Publish blocked on a stalled subscriber")
	}
	wg.Wait()
	if len(got) != 1000 {
		t.Fatalf("fast subscriber got %d values", len(got))
	}
	q := drain(stalled)
	if !stalled.Lagged() || len(q) != 4 || q[0] != 0 || q[3] != 3 {
		t.Fatalf("stalled: lagged %v queue %v", stalled.Lagged(), q)
	}
	h.Unsubscribe(stalled) // safe after being cut off
}

func TestStalledSubscriberDropData(t *testing.T) {
	h := New[int](DropData, entries(3), one, nil)
	s := h.Subscribe()
	for i := range 10 {
		h.Publish(i)
	}
	if s.Dropped() != 7 {
		t.Fatalf("dropped %d, want 7", s.Dropped())
	}
	next(s)
	h.Publish(10) // room again: delivered
	h.Close()
	got := drain(s)
	if s.Lagged() || len(got) != 3 || got[2] != 10 {
		t.Fatalf("got %v lagged %v", got, s.Lagged())
	}
}

func TestUnsubscribe(t *testing.T) {
	h := New[int](DropSubscriber, entries(0), one, nil)
	s := h.Subscribe()
	h.Unsubscribe(s)
	h.Unsubscribe(s)
	if h.HasSubscribers() || h.Publish(1) != 0 {
		t.Fatal("unsubscribed subscriber still receives")
	}
	h.Close()
	h.Unsubscribe(s)
}

func TestConcurrentUse(t *testing.T) {
	h := New[int](DropSubscriber, entries(16), one, nil)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				s := h.Subscribe()
				s.Next()
				h.Unsubscribe(s)
			}
		}()
	}
	for i := range 2000 {
		h.Publish(i)
	}
	wg.Wait()
	h.Close()
}

func BenchmarkPublish4Subscribers(b *testing.B) {
	h := New[[]byte](DropData, Limits{Bytes: 4 << 20, Overhead: 128}, func(b []byte) int { return len(b) }, nil)
	var wg sync.WaitGroup
	for range 4 {
		s := h.Subscribe()
		wg.Add(1)
		go func() {
			defer wg.Done()
			drain(s)
		}()
	}
	chunk := make([]byte, 32<<10)
	b.SetBytes(int64(len(chunk)))
	for b.Loop() {
		h.Publish(chunk)
	}
	h.Close()
	wg.Wait()
}

// The byte budget bounds a subscriber whose chunks are large, while one
// chunk always fits an empty queue.
func TestByteBudget(t *testing.T) {
	size := func(b []byte) int { return len(b) }
	h := New[[]byte](DropSubscriber, Limits{Bytes: 100, Entries: 1000}, size, nil)
	s := h.Subscribe()
	if h.Publish(make([]byte, 500)) != 1 {
		t.Fatal("an oversized chunk must fit an empty queue")
	}
	next(s)
	for range 10 {
		h.Publish(make([]byte, 10))
	}
	if s.Lagged() {
		t.Fatal("cut off within budget")
	}
	h.Publish(make([]byte, 1))
	if !s.Lagged() {
		t.Fatal("over budget but not cut off")
	}
	if got := drain(s); len(got) != 10 {
		t.Fatalf("queued %d chunks, want 10", len(got))
	}
}

// A flood of tiny chunks merges into few entries and stays within budget,
// so a program that flushes every byte is not cut off (a shell loop, awk
// with fflush).
func TestTinyChunksMerge(t *testing.T) {
	size := func(b []byte) int { return len(b) }
	merge := func(last, v []byte) ([]byte, bool) {
		if len(last)+len(v) > 64 {
			return nil, false
		}
		return append(append(make([]byte, 0, len(last)+len(v)), last...), v...), true
	}
	h := New[[]byte](DropSubscriber, Limits{Bytes: 1 << 20, Overhead: 128}, size, merge)
	s := h.Subscribe()
	shared := []byte("x")
	for range 100000 {
		h.Publish(shared)
	}
	h.Close()
	got := drain(s)
	total := 0
	for _, b := range got {
		total += len(b)
	}
	if s.Lagged() || total != 100000 || len(got) != 100000/64+1 {
		t.Fatalf("lagged %v, %d bytes in %d chunks", s.Lagged(), total, len(got))
	}
	if string(shared) != "x" {
		t.Fatal("merge modified a published chunk")
	}
}

// Without merging, the per-chunk overhead bounds a flood of tiny chunks.
func TestOverheadBoundsTinyChunks(t *testing.T) {
	h := New[[]byte](DropSubscriber, Limits{Bytes: 1000, Overhead: 100}, func(b []byte) int { return len(b) }, nil)
	s := h.Subscribe()
	for range 20 {
		h.Publish([]byte("x"))
	}
	if !s.Lagged() || len(drain(s)) != 9 {
		t.Fatal("tiny chunks were not bounded by their overhead")
	}
}

// A producer that waits for room loses nothing to a lone slow subscriber,
// and is not held back by a slow one while a fast one keeps up.
func TestWaitRoom(t *testing.T) {
	size := func(b []byte) int { return len(b) }
	h := New[[]byte](DropSubscriber, Limits{Bytes: 100, Overhead: 10}, size, nil)
	s := h.Subscribe()
	h.Publish(make([]byte, 50))
	h.Publish(make([]byte, 30))
	waited := make(chan struct{})
	go func() {
		h.WaitRoom(1, 50, nil)
		close(waited)
	}()
	select {
	case <-waited:
		t.Fatal("WaitRoom returned while the only subscriber was full")
	case <-time.After(50 * time.Millisecond):
	}
	next(s) // drains 60: room for another 50
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Fatal("WaitRoom did not return after the subscriber drained")
	}
	// A second subscriber with room means no waiting.
	h.Publish(make([]byte, 50))
	fast := h.Subscribe()
	h.WaitRoom(1, 50, nil)
	_ = fast
	// stop ends a wait.
	h.Unsubscribe(fast)
	stop := make(chan struct{}) // s is full again: only stop ends the wait
	close(stop)
	h.WaitRoom(1, 50, stop)
	if s.Lagged() {
		t.Fatal("the lone subscriber was cut off")
	}
}

// Every producer waiting for room wakes when it appears, not just one.
func TestWaitRoomWakesEveryProducer(t *testing.T) {
	for i := 0; i < 50; i++ {
		h := New[int](DropSubscriber, Limits{Bytes: 1}, func(int) int { return 1 }, nil)
		s := h.Subscribe()
		h.Publish(1)
		done := make(chan struct{}, 2)
		for j := 0; j < 2; j++ {
			go func() { h.WaitRoom(1, 1, nil); done <- struct{}{} }()
		}
		time.Sleep(time.Millisecond) // both are waiting (or not yet: then they find room)
		if _, ok, _ := s.Next(); !ok {
			t.Fatal("nothing queued")
		}
		for j := 0; j < 2; j++ {
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatalf("round %d: a producer stayed in WaitRoom after the queue emptied", i)
			}
		}
	}
}

// With Pause, a pausing producer waits once the lone subscriber has Pause
// queued, long before Bytes; Publish still cuts a subscriber off only at
// Bytes, so a slow reader among fast ones keeps its whole budget.
func TestWaitRoomPause(t *testing.T) {
	size := func(b []byte) int { return len(b) }
	h := New[[]byte](DropSubscriber, Limits{Bytes: 1000, Overhead: 10, Pause: 100}, size, nil)
	s := h.Subscribe()
	h.Publish(make([]byte, 60)) // costs 70: another 60 would pass Pause
	waited := make(chan struct{})
	go func() {
		h.WaitRoom(1, 50, nil)
		close(waited)
	}()
	select {
	case <-waited:
		t.Fatal("WaitRoom returned with the lone subscriber past Pause")
	case <-time.After(50 * time.Millisecond):
	}
	next(s)
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Fatal("WaitRoom did not return after the subscriber drained")
	}
	for range 14 { // 14 × 70 = 980: within Bytes
		h.Publish(make([]byte, 60))
	}
	if s.Lagged() {
		t.Fatal("Publish cut the subscriber off at Pause instead of Bytes")
	}
	if n := queued(s); n != 14 {
		t.Fatalf("%d chunks queued, want 14", n)
	}
}
