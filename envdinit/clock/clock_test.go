package clock

import (
	"errors"
	"testing"
	"time"
)

func TestNeedsStep(t *testing.T) {
	ref := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := []struct {
		now  time.Time
		want bool
	}{
		{ref, false},
		{ref.Add(-49 * time.Millisecond), false},
		{ref.Add(-51 * time.Millisecond), true},
		{ref.Add(4 * time.Second), false},
		{ref.Add(5 * time.Second), false},
		{ref.Add(5*time.Second + time.Millisecond), true},
		{ref.Add(-time.Hour), true},
	}
	for _, c := range cases {
		if got := NeedsStep(c.now, ref); got != c.want {
			t.Errorf("NeedsStep(%v) = %v, want %v", c.now.Sub(ref), got, c.want)
		}
	}
}

func TestSyncFake(t *testing.T) {
	ref := time.Now().Add(time.Hour)
	f := NewFake(time.Now())
	stepped, err := Sync(f, ref)
	if !stepped || err != nil {
		t.Fatalf("Sync = %v, %v", stepped, err)
	}
	if d := f.Now().Sub(ref); d < 0 || d > time.Second {
		t.Fatalf("fake clock not stepped: off by %v", d)
	}
	if stepped, _ := Sync(f, ref); stepped {
		t.Fatal("second Sync stepped again")
	}
	f.FailWith(errors.New("EPERM"))
	if _, err := Sync(f, ref.Add(time.Hour)); err == nil {
		t.Fatal("want error")
	}
	if n := len(f.Steps()); n != 2 {
		t.Fatalf("steps = %d", n)
	}
}

func TestNoopNeverSets(t *testing.T) {
	stepped, err := Sync(Noop{}, time.Now().Add(time.Hour))
	if !stepped || err != nil {
		t.Fatalf("Sync = %v, %v", stepped, err)
	}
	if time.Since(Noop{}.Now()) > time.Second {
		t.Fatal("noop clock moved")
	}
}
