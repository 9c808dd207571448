package state

import (
	"testing"
	"time"

	controlpb "github.com/envd-project/envd/gen/control"
)

func TestAdvanceInitTimestamp(t *testing.T) {
	s := New(&controlpb.Config{})
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if !s.LastInitTimestamp().IsZero() {
		t.Fatal("not zero at start")
	}
	steps := []struct {
		at   time.Time
		want bool
	}{
		{t0, true},
		{t0, false},                       // replay
		{t0.Add(-time.Nanosecond), false}, // older
		{t0.Add(time.Nanosecond), true},   // newer by 1 ns
		{time.Unix(0, 0).Add(-time.Hour), false},
	}
	for i, st := range steps {
		if got := s.AdvanceInitTimestamp(st.at); got != st.want {
			t.Fatalf("step %d: %v, want %v", i, got, st.want)
		}
	}
	if !s.LastInitTimestamp().Equal(t0.Add(time.Nanosecond)) {
		t.Fatal("newest not kept")
	}
}
