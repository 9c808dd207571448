// Package fanout copies a stream of chunks to any number of subscribers
// without ever letting a slow subscriber block the producer
// (ARCHITECTURE principle 6): each subscriber has a queue bounded in bytes
// (and in entries), and Publish never waits on it.
//
// What happens when a subscriber's queue is full is the hub's Policy:
//
//   - DropSubscriber cuts that subscriber off: its channel is closed and
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
	// DropSubscriber closes the lagging subscriber's channel and marks it Lagged.
	DropSubscriber Policy = iota
	// DropData discards the chunk for the lagging subscriber only.
	DropData
)

// Limits bound one subscriber's queue. A chunk is queued when it fits in
// both; a subscriber with an empty queue always takes one chunk.
type Limits struct {
	Bytes   int // total size of queued chunks
	Entries int // number of queued chunks
}

// Hub fans chunks out to subscribers. Use New.
type Hub[T any] struct {
	policy Policy
	limits Limits
	size   func(T) int

	mu     sync.Mutex
	subs   map[*Sub[T]]struct{}
	closed bool
	nsubs  atomic.Int32
}

// Sub is one subscriber. Its channel yields every chunk published after
// Subscribe (minus chunks dropped under DropData) and is closed when the
// hub closes (after every queued chunk) or when the subscriber is cut off.
// The receiver must call Taken for every chunk it receives.
type Sub[T any] struct {
	hub     *Hub[T]
	ch      chan T
	queued  atomic.Int64 // bytes published to ch and not yet Taken
	lagged  atomic.Bool
	dropped atomic.Uint64
}

// New returns a hub; size gives a chunk's size in bytes.
func New[T any](policy Policy, limits Limits, size func(T) int) *Hub[T] {
	limits.Entries = max(limits.Entries, 1)
	limits.Bytes = max(limits.Bytes, 1)
	return &Hub[T]{policy: policy, limits: limits, size: size, subs: map[*Sub[T]]struct{}{}}
}

// C is the subscriber's receive channel.
func (s *Sub[T]) C() <-chan T { return s.ch }

// Taken returns v's bytes to the subscriber's budget once received.
func (s *Sub[T]) Taken(v T) { s.queued.Add(-int64(s.hub.size(v))) }

// Lagged reports whether the subscriber was cut off because its queue was
// full (DropSubscriber). Valid once C is closed.
func (s *Sub[T]) Lagged() bool { return s.lagged.Load() }

// Dropped is the number of chunks discarded for this subscriber (DropData).
func (s *Sub[T]) Dropped() uint64 { return s.dropped.Load() }

// Subscribe adds a subscriber. On a closed hub the subscriber's channel is
// already closed, so a late subscriber sees the end straight away.
func (h *Hub[T]) Subscribe() *Sub[T] {
	s := &Sub[T]{hub: h, ch: make(chan T, h.limits.Entries)}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		close(s.ch)
		return s
	}
	h.subs[s] = struct{}{}
	h.nsubs.Store(int32(len(h.subs)))
	return s
}

// Unsubscribe removes s; it is safe to call more than once and after Close.
// The channel is left open: nobody reads it any more.
func (h *Hub[T]) Unsubscribe(s *Sub[T]) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs, s)
	h.nsubs.Store(int32(len(h.subs)))
}

// HasSubscribers lets a producer skip preparing a chunk nobody will see.
// It is a hint: a subscriber may arrive right after it returns false.
func (h *Hub[T]) HasSubscribers() bool { return h.nsubs.Load() > 0 }

// Publish offers v to every subscriber without blocking and returns how
// many queued it. Chunks published with no subscriber are dropped.
func (h *Hub[T]) Publish(v T) int {
	n := int64(h.size(v))
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return 0
	}
	queued := 0
	for s := range h.subs {
		if q := s.queued.Load(); q == 0 || q+n <= int64(h.limits.Bytes) {
			s.queued.Add(n)
			select {
			case s.ch <- v:
				queued++
				continue
			default:
				s.queued.Add(-n)
			}
		}
		switch h.policy {
		case DropData:
			s.dropped.Add(1)
		default:
			s.lagged.Store(true)
			close(s.ch)
			delete(h.subs, s)
		}
	}
	h.nsubs.Store(int32(len(h.subs)))
	return queued
}

// Close ends the stream: every subscriber's channel is closed after the
// chunks already queued in it. Publish after Close is a no-op.
func (h *Hub[T]) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	h.closed = true
	for s := range h.subs {
		close(s.ch)
		delete(h.subs, s)
	}
	h.nsubs.Store(0)
}
