// Package fanout copies a stream of chunks to any number of subscribers
// without ever letting a slow subscriber block the producer while another
// can still take chunks; it runs in envd-proc. Each subscriber has a queue
// bounded in bytes (each chunk also costs a fixed overhead, so a flood of tiny
// chunks is bounded too), and Publish never waits on it. A chunk that can be
// merged into the newest queued one is (same kind of output, small enough), so
// a program that flushes byte by byte costs bytes, not queue entries.
//
// What happens when a subscriber's queue is full is the hub's Policy:
//
//   - DropSubscriber cuts that subscriber off: its queue is closed and
//     Lagged reports true, so its stream can end with an error the client
//     sees (and the client may re-attach). Used for pipe output, where a
//     silently incomplete stdout would be a wrong answer.
//   - DropData discards the chunk for that subscriber only and counts it
//     (Dropped). Used for terminals, where staying attached matters more
//     than a burst of screen output, as on a lossy terminal link.
package fanout

import (
	"sync"
	"sync/atomic"
)

// Policy says what to do when a subscriber's queue is full.
type Policy int

const (
	// DropSubscriber closes the lagging subscriber's queue and marks it Lagged.
	DropSubscriber Policy = iota
	// DropData discards the chunk for the lagging subscriber only.
	DropData
)

// Limits bound one subscriber's queue. A chunk is queued when it fits; a
// subscriber with an empty queue always takes one chunk.
type Limits struct {
	Bytes int // total cost of queued chunks: size plus Overhead each
	// Overhead is the cost of one queued chunk beyond its size.
	Overhead int
	// Entries, when positive, also bounds the number of queued chunks.
	Entries int
	// Pause, when positive and below Bytes, is where WaitRoom holds a
	// pausing producer back: once every subscriber has that much queued.
	// A lone slow reader then costs Pause bytes of memory, not Bytes,
	// while one slow reader among fast ones is still given up to Bytes
	// before it is cut off.
	Pause int
}

// Hub fans chunks out to subscribers. Use New.
type Hub[T any] struct {
	policy Policy
	limits Limits
	size   func(T) int
	merge  func(last, v T) (T, bool)

	mu     sync.Mutex
	subs   map[*Sub[T]]struct{}
	closed bool
	nsubs  atomic.Int32
	// roomCh is closed (and dropped) when a queue shrinks, a subscriber
	// leaves or the hub closes: it wakes every producer waiting in
	// WaitRoom. It is made only when one waits, and roomMu is taken with
	// no other lock held after it, so Next may signal under a Sub's lock.
	roomMu sync.Mutex
	roomCh chan struct{}
}

// Sub is one subscriber. Next yields every chunk published after Subscribe
// (minus chunks dropped under DropData, merged where possible) and then
// reports done once the hub closes or the subscriber is cut off.
type Sub[T any] struct {
	hub   *Hub[T]
	ready chan struct{} // signalled when the queue gains a chunk or closes

	mu      sync.Mutex
	q       []T
	cost    int
	closed  bool
	lagged  bool
	dropped uint64
}

// New returns a hub; size gives a chunk's size in bytes; merge (may be nil)
// combines the newest queued chunk with a new one, returning false when
// they cannot be combined. merge must not modify its arguments: the same
// chunk is offered to every subscriber.
func New[T any](policy Policy, limits Limits, size func(T) int, merge func(last, v T) (T, bool)) *Hub[T] {
	limits.Bytes = max(limits.Bytes, 1)
	return &Hub[T]{policy: policy, limits: limits, size: size, merge: merge, subs: map[*Sub[T]]struct{}{}}
}

// Ready is signalled when Next may return something new.
func (s *Sub[T]) Ready() <-chan struct{} { return s.ready }

// Next pops the oldest queued chunk. ok is false when the queue is empty;
// done is true when it is empty and nothing more will come.
func (s *Sub[T]) Next() (v T, ok, done bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.q) == 0 {
		return v, false, s.closed
	}
	v = s.q[0]
	var zero T
	s.q[0] = zero
	s.q = s.q[1:]
	if len(s.q) == 0 {
		s.q = nil // let the backing array go
	}
	s.cost -= s.hub.size(v) + s.hub.limits.Overhead
	s.hub.signalRoom()
	return v, true, false
}

// Lagged reports whether the subscriber was cut off because its queue was
// full (DropSubscriber).
func (s *Sub[T]) Lagged() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lagged
}

// Dropped is the number of chunks discarded for this subscriber (DropData).
func (s *Sub[T]) Dropped() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped
}

func (s *Sub[T]) signal() {
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// Subscribe adds a subscriber. On a closed hub the subscriber is already
// done, so a late subscriber sees the end straight away.
func (h *Hub[T]) Subscribe() *Sub[T] {
	s := &Sub[T]{hub: h, ready: make(chan struct{}, 1)}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		s.closed = true
		s.signal()
		return s
	}
	h.subs[s] = struct{}{}
	h.nsubs.Store(int32(len(h.subs)))
	return s
}

// Unsubscribe removes s; it is safe to call more than once and after Close.
func (h *Hub[T]) Unsubscribe(s *Sub[T]) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs, s)
	h.nsubs.Store(int32(len(h.subs)))
	h.signalRoom()
}

func (h *Hub[T]) signalRoom() {
	h.roomMu.Lock()
	defer h.roomMu.Unlock()
	if h.roomCh != nil {
		close(h.roomCh)
		h.roomCh = nil
	}
}

func (h *Hub[T]) roomWake() <-chan struct{} {
	h.roomMu.Lock()
	defer h.roomMu.Unlock()
	if h.roomCh == nil {
		h.roomCh = make(chan struct{})
	}
	return h.roomCh
}

// WaitRoom blocks while every subscriber's queue is too full to take one
// chunk of up to size bytes from each of producers concurrent producers,
// and returns once one of them drains, leaves, the hub closes or stop
// closes. A producer that can pause (a pipe: the kernel then holds the
// writer back) calls it before reading more, so a lone slow reader loses
// nothing, while one slow reader among fast ones is still cut off by
// Publish and never holds the others back. The room must cover every
// producer: each may have passed the check and not yet published.
func (h *Hub[T]) WaitRoom(producers, size int, stop <-chan struct{}) {
	need := max(producers, 1) * (size + h.limits.Overhead)
	for {
		// Taken before the check, so room made after it still wakes us.
		wake := h.roomWake()
		if h.hasRoom(need) {
			return
		}
		select {
		case <-wake:
		case <-stop:
			return
		}
	}
}

func (h *Hub[T]) hasRoom(need int) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed || len(h.subs) == 0 {
		return true
	}
	limit := h.limits.Bytes
	if p := h.limits.Pause; p > 0 && p < limit {
		limit = p
	}
	for s := range h.subs {
		s.mu.Lock()
		ok := len(s.q) == 0 || s.cost+need <= limit
		s.mu.Unlock()
		if ok {
			return true
		}
	}
	return false
}

// HasSubscribers lets a producer skip preparing a chunk nobody will see.
// It is a hint: a subscriber may arrive right after it returns false.
func (h *Hub[T]) HasSubscribers() bool { return h.nsubs.Load() > 0 }

// offer queues v for s, merging it into the newest chunk when possible.
func (h *Hub[T]) offer(s *Sub[T], v T, n int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if last := len(s.q) - 1; last >= 0 && h.merge != nil && s.cost+n <= h.limits.Bytes {
		if m, ok := h.merge(s.q[last], v); ok {
			s.q[last] = m
			s.cost += n
			return true
		}
	}
	cost := n + h.limits.Overhead
	full := s.cost+cost > h.limits.Bytes || (h.limits.Entries > 0 && len(s.q) >= h.limits.Entries)
	if len(s.q) > 0 && full {
		if h.policy == DropData {
			s.dropped++
			return false
		}
		s.lagged = true
		s.closed = true
		return false
	}
	s.q = append(s.q, v)
	s.cost += cost
	return true
}

// Publish offers v to every subscriber without blocking and returns how
// many queued it. Chunks published with no subscriber are dropped.
func (h *Hub[T]) Publish(v T) int {
	n := h.size(v)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return 0
	}
	queued := 0
	for s := range h.subs {
		if h.offer(s, v, n) {
			queued++
		} else if s.Lagged() {
			delete(h.subs, s)
		}
		s.signal()
	}
	h.nsubs.Store(int32(len(h.subs)))
	return queued
}

// Close ends the stream: every subscriber is done after the chunks already
// queued for it. Publish after Close is a no-op.
func (h *Hub[T]) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	h.closed = true
	h.signalRoom()
	for s := range h.subs {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.signal()
		delete(h.subs, s)
	}
	h.nsubs.Store(0)
}
