package process

import (
	"context"
	"testing"
	"time"

	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/plugins/process/fanout"
)

// A lone slow reader of a process writing hard to stdout and stderr at
// once loses nothing: both readers pause for it, and the room they wait
// for covers a chunk from each.
func TestLoneSlowReaderGetsBothOutputsWhole(t *testing.T) {
	s := newService(t, nil)
	s.limits = fanout.Limits{Bytes: 1 << 20, Overhead: 160}
	const each = 8 << 20
	got := 0
	err := s.Start(context.Background(), shReq("head -c 8388608 /dev/zero & head -c 8388608 /dev/zero >&2; wait"),
		func(r *procpb.StartResponse) error {
			d := r.GetEvent().GetData()
			got += len(d.GetStdout()) + len(d.GetStderr())
			time.Sleep(100 * time.Microsecond)
			return nil
		})
	if err != nil || got != 2*each {
		t.Fatalf("lone slow reader: %v after %d of %d bytes", err, got, 2*each)
	}
}

// A KILL while the only reader is behind does not cut that reader off: it
// gets what was queued and the end event.
func TestKillKeepsTheLoneSlowReaderAttached(t *testing.T) {
	s := newService(t, nil)
	s.limits = fanout.Limits{Bytes: 1 << 20, Overhead: 160}
	release := make(chan struct{})
	pids := make(chan uint32, 1)
	done := make(chan error, 1)
	var end *procpb.ProcessEvent_EndEvent
	go func() {
		done <- s.Start(context.Background(), cmdReq("/bin/cat", "/dev/zero"), func(r *procpb.StartResponse) error {
			if st := r.GetEvent().GetStart(); st != nil {
				pids <- st.GetPid()
				return nil
			}
			if e := r.GetEvent().GetEnd(); e != nil {
				end = e
			}
			<-release
			return nil
		})
	}()
	pid := <-pids
	// Let the queue fill and cat block on its pipe.
	time.Sleep(300 * time.Millisecond)
	if _, err := s.SendSignal(context.Background(), &procpb.SendSignalRequest{Process: pidSel(pid), Signal: procpb.Signal_SIGNAL_SIGKILL}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // past the drain after the reap
	close(release)
	if err := <-done; err != nil || end == nil {
		t.Fatalf("stream ended with %v, end event %v", err, end)
	}
	if end.GetExitCode() != -1 || end.GetStatus() != "signal: killed" {
		t.Fatalf("end event %v", end)
	}
}
