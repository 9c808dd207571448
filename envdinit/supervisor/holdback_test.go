package supervisor

import (
	"testing"
	"time"

	"github.com/envd-project/envd/envdinit/state"
	controlpb "github.com/envd-project/envd/gen/control"
	"go.uber.org/zap"
)

func newHeld(t *testing.T) (*Supervisor, *managed, *managed) {
	t.Helper()
	s := New(zap.NewNop(), nil, state.New(&controlpb.Config{}),
		[]Spec{{Name: "first", CgroupFD: -1}, {Name: "later", CgroupFD: -1}}, Options{})
	return s, s.plugins["first"], s.plugins["later"]
}

func released(s *Supervisor, m *managed) <-chan bool {
	out := make(chan bool, 1)
	go func() { out <- s.holdBack(m) }()
	return out
}

func TestLaterPluginStartsAtOnceWhenACallNeedsIt(t *testing.T) {
	s, _, later := newHeld(t)
	got := released(s, later)
	// The first plugin never comes up and the head start is 100 ms; a call
	// waiting for the later plugin must not wait for either.
	go func() { _, _ = s.wait(t.Context(), "later", nil) }()
	select {
	case ok := <-got:
		if !ok {
			t.Fatal("held back plugin reported a stop")
		}
	case <-time.After(firstHeadStart / 2):
		t.Fatal("a call for the plugin did not start it")
	}
}

func TestLaterPluginStartsAfterTheFirstIsUp(t *testing.T) {
	s, first, later := newHeld(t)
	got := released(s, later)
	first.setUp(&instance{})
	select {
	case ok := <-got:
		if !ok {
			t.Fatal("held back plugin reported a stop")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("never released")
	}
}

func TestHeldBackPluginStopsWithTheSupervisor(t *testing.T) {
	s, _, later := newHeld(t)
	got := released(s, later)
	close(s.stopped)
	if <-got {
		t.Fatal("released after Stop")
	}
}
