// Package clock steps the guest's wall clock to the host's time on /init
// (WIRE.md §9.3, E2B flavor); it runs in envd-init. The interface exists so
// tests and the Wrenn flavor never touch the real CLOCK_REALTIME.
package clock

import (
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Tolerances of §9.3: a guest that is a little ahead is left alone (stepping
// backwards hurts more than a small skew), one that is behind is fixed early.
const (
	MaxBehind = 50 * time.Millisecond
	MaxAhead  = 5 * time.Second
)

// Clock reads and sets the wall clock.
type Clock interface {
	Now() time.Time
	Set(t time.Time) error
}

// System is CLOCK_REALTIME; Set needs CAP_SYS_TIME.
type System struct{}

// Now implements Clock.
func (System) Now() time.Time { return time.Now() }

// Set implements Clock with clock_settime(2).
func (System) Set(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("clock_settime(CLOCK_REALTIME): %w", err)
	}
	return nil
}

// Noop reads the real clock and never changes it (Wrenn flavor, where
// chronyd owns the clock).
type Noop struct{}

// Now implements Clock.
func (Noop) Now() time.Time { return time.Now() }

// Set implements Clock and does nothing.
func (Noop) Set(time.Time) error { return nil }

// Fake is a settable clock for tests: it runs at real speed from an offset.
type Fake struct {
	mu     sync.Mutex
	offset time.Duration
	steps  []time.Time
	err    error
}

// NewFake starts at now.
func NewFake(now time.Time) *Fake { return &Fake{offset: time.Until(now)} }

// Now implements Clock.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return time.Now().Add(f.offset)
}

// Set implements Clock; it fails with the error given to FailWith.
func (f *Fake) Set(t time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.steps = append(f.steps, t)
	if f.err != nil {
		return f.err
	}
	f.offset = time.Until(t)
	return nil
}

// FailWith makes later Set calls fail (nil to succeed again).
func (f *Fake) FailWith(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}

// Steps returns every time Set was called with.
func (f *Fake) Steps() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.steps...)
}

// NeedsStep reports whether now is too far from the reference time ref.
func NeedsStep(now, ref time.Time) bool {
	return now.Before(ref.Add(-MaxBehind)) || now.After(ref.Add(MaxAhead))
}

// Sync steps c to ref when NeedsStep says so; it reports whether it tried.
func Sync(c Clock, ref time.Time) (stepped bool, err error) {
	if !NeedsStep(c.Now(), ref) {
		return false, nil
	}
	return true, c.Set(ref)
}
