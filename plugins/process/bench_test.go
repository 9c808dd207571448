package process

import (
	"context"
	"os/exec"
	"testing"

	procpb "github.com/envd-project/envd/gen/process"
)

// BenchmarkStartTrue is one Start of /bin/true through the service, from
// the call to the end event (pipe mode, stdin absent so a stdin pipe too).
func BenchmarkStartTrue(b *testing.B) {
	s := newService(b, nil)
	req := cmdReq("/bin/true")
	ctx := context.Background()
	for b.Loop() {
		var end *procpb.ProcessEvent_EndEvent
		err := s.Start(ctx, req, func(r *procpb.StartResponse) error {
			if e := r.GetEvent().GetEnd(); e != nil {
				end = e
			}
			return nil
		})
		if err != nil || end.GetExitCode() != 0 {
			b.Fatalf("Start: %v, end %v", err, end)
		}
	}
}

// BenchmarkForkExecWrapper is the floor for BenchmarkStartTrue: os/exec
// of the same /bin/sh wrapper running /bin/true, nothing else.
func BenchmarkForkExecWrapper(b *testing.B) {
	s := newService(b, nil)
	argv := s.wrap.argv("/bin/true", nil)
	for b.Loop() {
		cmd := &exec.Cmd{Path: argv[0], Args: argv}
		if err := cmd.Run(); err != nil {
			b.Fatal(err)
		}
	}
}
