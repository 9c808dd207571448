package integration

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/gen/filesystem/filesystemconnect"
	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/gen/process/processconnect"
	"github.com/envd-project/envd/test/envdtest"
)

// maxErrorMessage is the bound every error message must keep after
// crossing the hop (grpcadapter.MaxErrorMessage, with room for the
// front door's own prefix).
const maxErrorMessage = 8 << 10

// liveStreams are other clients' streams, each on its own connection: a
// recursive WatchDir and a Start that prints a line every 100 ms.
type liveStreams struct {
	dir      string
	watch    chan string // names of watch events
	output   chan struct{}
	watchEnd chan error // end of the watch stream
	startEnd chan error // end of the Start stream
	n        int
}

func startLiveStreams(t *testing.T, ctx context.Context, e *envdtest.Envd) *liveStreams {
	t.Helper()
	ls := &liveStreams{dir: t.TempDir(), watch: make(chan string, 1024), output: make(chan struct{}, 1024),
		watchEnd: make(chan error, 1), startEnd: make(chan error, 1)}
	fsc := filesystemconnect.NewFilesystemClient(&http.Client{Transport: &http.Transport{}}, e.URL)
	ws, err := fsc.WatchDir(ctx, connect.NewRequest(&fspb.WatchDirRequest{Path: ls.dir, Recursive: true}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	if !ws.Receive() || ws.Msg().GetStart() == nil {
		t.Fatalf("watch: no start event: %v", ws.Err())
	}
	go func() {
		for ws.Receive() {
			if ev := ws.Msg().GetFilesystem(); ev != nil {
				select {
				case ls.watch <- ev.GetName():
				default:
				}
			}
		}
		ls.watchEnd <- fmt.Errorf("watch stream ended: %w", ws.Err())
	}()
	pc := processconnect.NewProcessClient(&http.Client{Transport: &http.Transport{}}, e.URL)
	ss, err := pc.Start(ctx, connect.NewRequest(&procpb.StartRequest{Process: sh("while :; do echo tick; sleep 0.1; done")}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ss.Close() })
	if !ss.Receive() || ss.Msg().GetEvent().GetStart() == nil {
		t.Fatalf("start: no start event: %v", ss.Err())
	}
	pid := ss.Msg().GetEvent().GetStart().GetPid()
	t.Cleanup(func() {
		_, _ = pc.SendSignal(context.Background(), connect.NewRequest(&procpb.SendSignalRequest{
			Process: &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Pid{Pid: pid}}, Signal: procpb.Signal_SIGNAL_SIGKILL}))
	})
	go func() {
		for ss.Receive() {
			if ss.Msg().GetEvent().GetData() != nil {
				select {
				case ls.output <- struct{}{}:
				default:
				}
			}
		}
		ls.startEnd <- fmt.Errorf("start stream ended: %w", ss.Err())
	}()
	return ls
}

// check proves both streams still deliver: a new file shows up in the
// watch, and the process's output keeps arriving.
func (ls *liveStreams) check(t *testing.T, after string) {
	t.Helper()
	ls.n++
	name := fmt.Sprintf("probe-%d", ls.n)
	if err := os.WriteFile(filepath.Join(ls.dir, name), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// Drain output seen before the probe: only new output proves the stream.
	for len(ls.output) > 0 {
		<-ls.output
	}
	timeout := time.After(20 * time.Second)
	for seen := false; !seen; {
		select {
		case n := <-ls.watch:
			seen = n == name
		case err := <-ls.watchEnd:
			t.Fatalf("after %s: %v", after, err)
		case err := <-ls.startEnd:
			t.Fatalf("after %s: %v", after, err)
		case <-timeout:
			t.Fatalf("after %s: watch event %s not seen", after, name)
		}
	}
	select {
	case <-ls.output:
	case err := <-ls.startEnd:
		t.Fatalf("after %s: %v", after, err)
	case <-timeout:
		t.Fatalf("after %s: no process output", after)
	}
}

// drainStream reads a server stream to its end and returns its error.
func drainStream[T any](s *connect.ServerStreamForClient[T], err error) error {
	if err != nil {
		return err
	}
	defer s.Close()
	for s.Receive() {
	}
	return s.Err()
}

// TestOversizedInputIsContained sends one oversized field to every RPC of
// both services while other clients' streams run: each call gets a clear
// status with a bounded message, and the other streams continue (the
// shared envd-init↔plugin connection survives).
func TestOversizedInputIsContained(t *testing.T) {
	e := envdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ls := startLiveStreams(t, ctx, e)

	const size = 17 << 20
	big := strings.Repeat("a", size)
	bigPath := "/tmp/" + big
	tagSel := &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Tag{Tag: big}}
	stdin := &procpb.ProcessInput{Input: &procpb.ProcessInput_Stdin{Stdin: []byte(big)}}

	protocols := envdtest.Protocols()
	for _, p := range []envdtest.Protocol{protocols[1], protocols[3]} { // connect-proto (HTTP/1.1), gRPC (h2c)
		pc := processconnect.NewProcessClient(p.Client, e.URL, p.Options...)
		fc := filesystemconnect.NewFilesystemClient(p.Client, e.URL, p.Options...)
		calls := []struct {
			name string
			call func(ctx context.Context) error
			// ok: the call may succeed (the oversized field is harmless to it).
			ok bool
		}{
			{"Process.List", func(ctx context.Context) error {
				_, err := pc.List(ctx, connect.NewRequest(&procpb.ListRequest{}))
				return err
			}, true},
			{"Process.Start/arg", func(ctx context.Context) error {
				return drainStream(pc.Start(ctx, connect.NewRequest(&procpb.StartRequest{Process: &procpb.ProcessConfig{Cmd: "/bin/echo", Args: []string{big}}})))
			}, false},
			{"Process.Start/cmd", func(ctx context.Context) error {
				return drainStream(pc.Start(ctx, connect.NewRequest(&procpb.StartRequest{Process: &procpb.ProcessConfig{Cmd: bigPath}})))
			}, false},
			{"Process.Start/cwd", func(ctx context.Context) error {
				return drainStream(pc.Start(ctx, connect.NewRequest(&procpb.StartRequest{Process: &procpb.ProcessConfig{Cmd: "/bin/true", Cwd: &bigPath}})))
			}, false},
			{"Process.Start/env", func(ctx context.Context) error {
				return drainStream(pc.Start(ctx, connect.NewRequest(&procpb.StartRequest{Process: &procpb.ProcessConfig{Cmd: "/bin/true", Envs: map[string]string{big: "x"}}})))
			}, false},
			{"Process.Connect", func(ctx context.Context) error {
				return drainStream(pc.Connect(ctx, connect.NewRequest(&procpb.ConnectRequest{Process: tagSel})))
			}, false},
			{"Process.Update", func(ctx context.Context) error {
				_, err := pc.Update(ctx, connect.NewRequest(&procpb.UpdateRequest{Process: tagSel}))
				return err
			}, false},
			{"Process.SendInput", func(ctx context.Context) error {
				_, err := pc.SendInput(ctx, connect.NewRequest(&procpb.SendInputRequest{Process: tagSel, Input: stdin}))
				return err
			}, false},
			{"Process.StreamInput", func(ctx context.Context) error {
				s := pc.StreamInput(ctx)
				err := s.Send(&procpb.StreamInputRequest{Event: &procpb.StreamInputRequest_Start{Start: &procpb.StreamInputRequest_StartEvent{Process: tagSel}}})
				if err == nil {
					err = s.Send(&procpb.StreamInputRequest{Event: &procpb.StreamInputRequest_Data{Data: &procpb.StreamInputRequest_DataEvent{Input: stdin}}})
				}
				_, cerr := s.CloseAndReceive()
				if cerr != nil {
					return cerr
				}
				return err
			}, false},
			{"Process.SendSignal", func(ctx context.Context) error {
				_, err := pc.SendSignal(ctx, connect.NewRequest(&procpb.SendSignalRequest{Process: tagSel, Signal: procpb.Signal_SIGNAL_SIGTERM}))
				return err
			}, false},
			{"Process.CloseStdin", func(ctx context.Context) error {
				_, err := pc.CloseStdin(ctx, connect.NewRequest(&procpb.CloseStdinRequest{Process: tagSel}))
				return err
			}, false},
			{"Filesystem.Stat", func(ctx context.Context) error {
				_, err := fc.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: bigPath}))
				return err
			}, false},
			{"Filesystem.MakeDir", func(ctx context.Context) error {
				_, err := fc.MakeDir(ctx, connect.NewRequest(&fspb.MakeDirRequest{Path: bigPath}))
				return err
			}, false},
			{"Filesystem.Move", func(ctx context.Context) error {
				_, err := fc.Move(ctx, connect.NewRequest(&fspb.MoveRequest{Source: bigPath, Destination: bigPath + "b"}))
				return err
			}, false},
			{"Filesystem.ListDir", func(ctx context.Context) error {
				_, err := fc.ListDir(ctx, connect.NewRequest(&fspb.ListDirRequest{Path: bigPath}))
				return err
			}, false},
			{"Filesystem.Remove", func(ctx context.Context) error {
				_, err := fc.Remove(ctx, connect.NewRequest(&fspb.RemoveRequest{Path: bigPath}))
				return err
			}, false},
			{"Filesystem.WatchDir", func(ctx context.Context) error {
				return drainStream(fc.WatchDir(ctx, connect.NewRequest(&fspb.WatchDirRequest{Path: bigPath})))
			}, false},
			{"Filesystem.CreateWatcher", func(ctx context.Context) error {
				_, err := fc.CreateWatcher(ctx, connect.NewRequest(&fspb.CreateWatcherRequest{Path: bigPath}))
				return err
			}, false},
			{"Filesystem.GetWatcherEvents", func(ctx context.Context) error {
				_, err := fc.GetWatcherEvents(ctx, connect.NewRequest(&fspb.GetWatcherEventsRequest{WatcherId: big}))
				return err
			}, false},
			{"Filesystem.RemoveWatcher", func(ctx context.Context) error {
				_, err := fc.RemoveWatcher(ctx, connect.NewRequest(&fspb.RemoveWatcherRequest{WatcherId: big}))
				return err
			}, false},
		}
		for _, c := range calls {
			name := p.Name + "/" + c.name
			if c.name == "Process.StreamInput" && p.Name != "grpc" {
				// Client streaming needs HTTP/2 (WIRE §2.2: no client uses it).
				continue
			}
			cctx, ccancel := context.WithTimeout(ctx, time.Minute)
			err := c.call(cctx)
			ccancel()
			switch {
			case err == nil && !c.ok:
				t.Errorf("%s: succeeded with a %d-byte field", name, size)
			case err != nil:
				code := connect.CodeOf(err)
				var ce *connect.Error
				msg := err.Error()
				if errors.As(err, &ce) {
					msg = ce.Message()
				}
				// unavailable would be the torn connection; unknown a
				// transport failure of the client's own.
				if code == connect.CodeUnavailable || code == connect.CodeUnknown || code == connect.CodeInternal && strings.Contains(msg, "stream terminated") {
					t.Errorf("%s: %v (%.300s)", name, code, msg)
				}
				if len(msg) > maxErrorMessage {
					t.Errorf("%s: %d-byte error message (%.200s…)", name, len(msg), msg)
				}
				t.Logf("%s: %v: %.160s", name, code, msg)
			}
			ls.check(t, name)
		}
	}
}

// TestMessageOverHopLimit: a message larger than the hop carries
// (contract.MaxMessageSize, 64 MiB) is refused at the front door with
// resource_exhausted before envd-init buffers it, and the other clients'
// streams continue.
func TestMessageOverHopLimit(t *testing.T) {
	e := envdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ls := startLiveStreams(t, ctx, e)
	fc := filesystemconnect.NewFilesystemClient(http.DefaultClient, e.URL)
	_, err := fc.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: "/tmp/" + strings.Repeat("c", 65<<20)}))
	if connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Errorf("65 MiB Stat: %v", err)
	}
	ls.check(t, "a 65 MiB Stat")
}

// TestErrorMessageBounded is the 200 KB case: an input well under any
// transport limit still comes back as a bounded error, its echo cut and
// marked.
func TestErrorMessageBounded(t *testing.T) {
	e := envdtest.Start(t)
	ctx := envdtest.Ctx(t, time.Minute)
	big := "/tmp/" + strings.Repeat("b", 200<<10)
	for _, p := range envdtest.Protocols() {
		fc := filesystemconnect.NewFilesystemClient(p.Client, e.URL, p.Options...)
		_, err := fc.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: big}))
		var ce *connect.Error
		if !errors.As(err, &ce) {
			t.Fatalf("%s: %v", p.Name, err)
		}
		if len(ce.Message()) > maxErrorMessage || !strings.Contains(ce.Message(), "bytes cut") {
			t.Errorf("%s: %v, %d-byte message, not cut and marked: %.200s", p.Name, ce.Code(), len(ce.Message()), ce.Message())
		}
		pc := processconnect.NewProcessClient(p.Client, e.URL, p.Options...)
		err = drainStream(pc.Start(ctx, connect.NewRequest(&procpb.StartRequest{Process: &procpb.ProcessConfig{Cmd: big}})))
		if !errors.As(err, &ce) {
			t.Fatalf("%s: start: %v", p.Name, err)
		}
		if len(ce.Message()) > maxErrorMessage {
			t.Errorf("%s: start: %v, %d-byte message", p.Name, ce.Code(), len(ce.Message()))
		}
	}
}
