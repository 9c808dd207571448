package process

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/zap"

	controlpb "github.com/envd-project/envd/gen/control"
	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/internal/cgroups"
	"github.com/envd-project/envd/internal/users"
	"github.com/envd-project/envd/plugins/pluginkit/defaults"
	"github.com/envd-project/envd/plugins/process/fanout"
)

const waitLimit = 15 * time.Second

func newService(t testing.TB, cfg *controlpb.Config) *Service {
	t.Helper()
	return newServiceWith(t, cfg, users.Default, cgroups.Noop{})
}

func newServiceWith(t testing.TB, cfg *controlpb.Config, db *users.DB, cg cgroups.Manager) *Service {
	t.Helper()
	s := New(zap.NewNop(), defaults.NewStore(cfg), db, cg)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return s
}

func cmdReq(cmd string, args ...string) *procpb.StartRequest {
	return &procpb.StartRequest{Process: &procpb.ProcessConfig{Cmd: cmd, Args: args}}
}

func shReq(script string) *procpb.StartRequest { return cmdReq("/bin/sh", "-c", script) }

func ptr[T any](v T) *T { return &v }

// stream collects the events of one Start or Connect call.
type stream struct {
	events chan *procpb.ProcessEvent
	done   chan error
	cancel context.CancelFunc

	pid        uint32
	stdout     bytes.Buffer
	stderr     bytes.Buffer
	pty        bytes.Buffer
	keepalives int
	end        *procpb.ProcessEvent_EndEvent
	err        error
	finished   bool
}

func newStream(t testing.TB, ctx context.Context) (*stream, context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	return &stream{events: make(chan *procpb.ProcessEvent, 1<<16), done: make(chan error, 1), cancel: cancel}, ctx
}

func startStream(t testing.TB, s *Service, ctx context.Context, req *procpb.StartRequest) *stream {
	t.Helper()
	st, ctx := newStream(t, ctx)
	go func() {
		st.done <- s.Start(ctx, req, func(r *procpb.StartResponse) error {
			st.events <- r.GetEvent()
			return nil
		})
	}()
	return st
}

func connectStream(t testing.TB, s *Service, ctx context.Context, sel *procpb.ProcessSelector) *stream {
	t.Helper()
	st, ctx := newStream(t, ctx)
	go func() {
		st.done <- s.Connect(ctx, &procpb.ConnectRequest{Process: sel}, func(r *procpb.ConnectResponse) error {
			st.events <- r.GetEvent()
			return nil
		})
	}()
	return st
}

func (st *stream) apply(t testing.TB, ev *procpb.ProcessEvent) {
	t.Helper()
	switch e := ev.GetEvent().(type) {
	case *procpb.ProcessEvent_Start:
		if st.pid != 0 {
			t.Errorf("second start event")
		}
		st.pid = e.Start.GetPid()
	case *procpb.ProcessEvent_Data:
		if st.pid == 0 {
			t.Errorf("data before start")
		}
		st.stdout.Write(e.Data.GetStdout())
		st.stderr.Write(e.Data.GetStderr())
		st.pty.Write(e.Data.GetPty())
	case *procpb.ProcessEvent_Keepalive:
		st.keepalives++
	case *procpb.ProcessEvent_End:
		if st.end != nil {
			t.Errorf("second end event")
		}
		st.end = e.End
	default:
		t.Errorf("empty event")
	}
}

// step handles one event or the end of the call; false once finished.
func (st *stream) step(t testing.TB, deadline <-chan time.Time) bool {
	t.Helper()
	if st.finished {
		return false
	}
	select {
	case ev := <-st.events:
		st.apply(t, ev)
		return true
	case err := <-st.done:
	drain:
		for {
			select {
			case ev := <-st.events:
				st.apply(t, ev)
			default:
				break drain
			}
		}
		st.err, st.finished = err, true
		return false
	case <-deadline:
		t.Fatalf("stream: no progress within %v (pid %d, stdout %s, stderr %s, pty %s)", waitLimit, st.pid, clip(st.stdout.String()), clip(st.stderr.String()), clip(st.pty.String()))
		return false
	}
}

// wait collects until the call returns. waitLimit bounds the time without
// progress, not the whole call: a big output on a loaded machine may take
// longer than that as long as it keeps coming.
func (st *stream) wait(t testing.TB) *stream {
	t.Helper()
	for st.step(t, time.After(waitLimit)) {
	}
	return st
}

// waitPID waits for the start event.
func (st *stream) waitPID(t testing.TB) uint32 {
	t.Helper()
	for st.pid == 0 && st.step(t, time.After(waitLimit)) {
	}
	if st.pid == 0 {
		t.Fatalf("no start event; call ended with %v", st.err)
	}
	return st.pid
}

// waitOutput waits until the output (all kinds) contains want.
func (st *stream) waitOutput(t testing.TB, want string) {
	t.Helper()
	for !strings.Contains(st.output(), want) {
		if !st.step(t, time.After(waitLimit)) {
			t.Fatalf("output %s never contained %q (call ended: %v)", clip(st.output()), want, st.err)
		}
	}
}

// clip shows the start of a long output and its length, not megabytes.
func clip(s string) string {
	if len(s) <= 200 {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q... (%d bytes)", s[:200], len(s))
}

func (st *stream) output() string { return st.stdout.String() + st.stderr.String() + st.pty.String() }

func requireCode(t testing.TB, err error, code connect.Code, msg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("want %v error %q, got nil", code, msg)
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		t.Fatalf("want *connect.Error %v %q, got %T %v", code, msg, err, err)
	}
	if ce.Code() != code {
		t.Fatalf("want code %v, got %v (%q)", code, ce.Code(), ce.Message())
	}
	if msg != "" && ce.Message() != msg {
		t.Fatalf("want message %q, got %q", msg, ce.Message())
	}
}

func pidSel(pid uint32) *procpb.ProcessSelector {
	return &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Pid{Pid: pid}}
}

func tagSel(tag string) *procpb.ProcessSelector {
	return &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Tag{Tag: tag}}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// eventually polls cond for up to waitLimit.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func newHubForTest(s *Service) *fanout.Hub[*procpb.ProcessEvent] {
	return newHub(fanout.DropSubscriber, s.limits)
}
