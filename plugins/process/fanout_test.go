package process

import (
	"context"
	"sync"
	"testing"

	"connectrpc.com/connect"

	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/plugins/process/fanout"
)

// stalledConnect subscribes with a client that takes the start event and
// then blocks on the next send until release is closed.
func stalledConnect(s *Service, sel *procpb.ProcessSelector, release <-chan struct{}) (started <-chan struct{}, result <-chan error, received func() int) {
	st := make(chan struct{})
	res := make(chan error, 1)
	var mu sync.Mutex
	n := 0
	go func() {
		res <- s.Connect(context.Background(), &procpb.ConnectRequest{Process: sel}, func(r *procpb.ConnectResponse) error {
			if r.GetEvent().GetStart() != nil {
				close(st)
				return nil
			}
			<-release
			mu.Lock()
			n += len(r.GetEvent().GetData().GetStdout()) + len(r.GetEvent().GetData().GetPty())
			mu.Unlock()
			return nil
		})
	}()
	return st, res, func() int { mu.Lock(); defer mu.Unlock(); return n }
}

// A stalled subscriber of pipe output never slows the process or the other
// subscribers; it is cut off with resource_exhausted once it falls a full
// queue behind.
func TestFanOutStalledSubscriberPipe(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	s.limits = fanout.Limits{Bytes: 1 << 20, Overhead: 160}
	// 256 separate writes of 16 KiB: a producer paced by fork/exec that the
	// fast subscribers keep up with, but 4 MiB is far beyond the stalled
	// one's budget.
	const size = 256 * 16384
	st := startStream(t, s, context.Background(), shReq("read x; for i in $(seq 256); do head -c 16384 /dev/zero; done"))
	pid := st.waitPID(t)
	release := make(chan struct{})
	started, result, _ := stalledConnect(s, pidSel(pid), release)
	<-started
	fast := connectStream(t, s, context.Background(), pidSel(pid))
	fast.waitPID(t)

	must(t, sendStdin(s, pidSel(pid), "\n"))
	st.wait(t)
	fast.wait(t)
	for name, c := range map[string]*stream{"start": st, "connect": fast} {
		if c.err != nil || c.stdout.Len() != size || c.end.GetExitCode() != 0 {
			t.Errorf("%s subscriber: err %v, %d bytes, end %v", name, c.err, c.stdout.Len(), c.end)
		}
	}
	close(release)
	err := <-result
	requireCode(t, err, connect.CodeResourceExhausted, "")
	t.Logf("stalled subscriber: %v", err)
}

// On a terminal, a stalled subscriber loses data instead of its stream,
// and still gets the end event.
func TestFanOutStalledSubscriberPTY(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	s.limits = fanout.Limits{Bytes: 1 << 20, Overhead: 160}
	const size = 256 * 16384
	st := startStream(t, s, context.Background(), ptyReq("/bin/sh", 80, 24, "-c", "read x; for i in $(seq 256); do head -c 16384 /dev/zero; done"))
	pid := st.waitPID(t)
	release := make(chan struct{})
	started, result, received := stalledConnect(s, pidSel(pid), release)
	<-started

	sendPTY(t, s, pid, "\n")
	st.wait(t)
	// Exact counts would depend on scheduling: a loaded machine may make
	// even this subscriber drop a burst, by design.
	if st.err != nil || st.end.GetExitCode() != 0 || st.pty.Len() < size/2 {
		t.Errorf("start subscriber: err %v, %d bytes, end %v", st.err, st.pty.Len(), st.end)
	}
	close(release)
	if err := <-result; err != nil {
		t.Fatalf("stalled PTY subscriber: %v", err)
	}
	if n := received(); n > (1<<20)+ptyChunk {
		t.Errorf("stalled subscriber got %d bytes, more than its budget", n)
	}
}
