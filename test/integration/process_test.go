package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/gen/process/processconnect"
	"github.com/envd-project/envd/test/envdtest"
	"google.golang.org/protobuf/proto"
)

// collected is what one Start or Connect stream delivered.
type collected struct {
	pid    uint32
	stdout bytes.Buffer
	stderr bytes.Buffer
	pty    bytes.Buffer
	end    *procpb.ProcessEvent_EndEvent
	order  []string
}

func (c *collected) add(ev *procpb.ProcessEvent) {
	switch e := ev.GetEvent().(type) {
	case *procpb.ProcessEvent_Start:
		c.pid = e.Start.GetPid()
		c.order = append(c.order, "start")
	case *procpb.ProcessEvent_Data:
		c.stdout.Write(e.Data.GetStdout())
		c.stderr.Write(e.Data.GetStderr())
		c.pty.Write(e.Data.GetPty())
		c.order = append(c.order, "data")
	case *procpb.ProcessEvent_End:
		c.end = e.End
		c.order = append(c.order, "end")
	case *procpb.ProcessEvent_Keepalive:
		c.order = append(c.order, "keepalive")
	}
}

func startAll(t *testing.T, ctx context.Context, cl processconnect.ProcessClient, req *procpb.StartRequest, user string) (*collected, error) {
	t.Helper()
	r := connect.NewRequest(req)
	if user != "" {
		r.Header().Set("Authorization", envdtest.BasicUser(user))
	}
	stream, err := cl.Start(ctx, r)
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	var c collected
	for stream.Receive() {
		c.add(stream.Msg().GetEvent())
	}
	return &c, stream.Err()
}

func sh(script string) *procpb.ProcessConfig {
	return &procpb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", script}}
}

func forEachProtocol(t *testing.T, e *envdtest.Envd, fn func(t *testing.T, cl processconnect.ProcessClient)) {
	for _, p := range envdtest.Protocols() {
		t.Run(p.Name, func(t *testing.T) {
			fn(t, processconnect.NewProcessClient(p.Client, e.URL, p.Options...))
		})
	}
}

func TestProcessStartOutputAndExit(t *testing.T) {
	e := envdtest.Start(t)
	forEachProtocol(t, e, func(t *testing.T, cl processconnect.ProcessClient) {
		ctx := envdtest.Ctx(t, 20*time.Second)
		c, err := startAll(t, ctx, cl, &procpb.StartRequest{
			Process: sh(`echo out; echo err >&2; echo "$FOO $HOME $USER"; pwd; exit 3`),
		}, "")
		if err != nil {
			t.Fatal(err)
		}
		if c.order[0] != "start" || c.order[len(c.order)-1] != "end" || c.pid == 0 {
			t.Fatalf("event order %v pid %d", c.order, c.pid)
		}
		if got := c.stdout.String(); got != "out\n /root root\n/root\n" {
			t.Errorf("stdout %q", got)
		}
		if got := c.stderr.String(); got != "err\n" {
			t.Errorf("stderr %q", got)
		}
		want := &procpb.ProcessEvent_EndEvent{ExitCode: 3, Exited: true, Status: "exit status 3", Error: proto.String("exit status 3")}
		if !proto.Equal(c.end, want) {
			t.Errorf("end %v, want %v", c.end, want)
		}

		cwd := "/tmp"
		c, err = startAll(t, ctx, cl, &procpb.StartRequest{Process: &procpb.ProcessConfig{
			Cmd: "/bin/sh", Args: []string{"-c", `echo "$FOO"; pwd; id -un`}, Envs: map[string]string{"FOO": "bar"}, Cwd: &cwd,
		}}, "user")
		if err != nil {
			t.Fatal(err)
		}
		if got := c.stdout.String(); got != "bar\n/tmp\nuser\n" {
			t.Errorf("stdout as user %q", got)
		}
		if !proto.Equal(c.end, &procpb.ProcessEvent_EndEvent{ExitCode: 0, Exited: true, Status: "exit status 0"}) {
			t.Errorf("end %v", c.end)
		}

		// A missing command is exit 127 from the wrapper, not an RPC error.
		c, err = startAll(t, ctx, cl, &procpb.StartRequest{Process: &procpb.ProcessConfig{Cmd: "/no/such/cmd"}}, "")
		if err != nil {
			t.Fatal(err)
		}
		if c.end.GetExitCode() != 127 || !strings.Contains(c.stderr.String(), "not found") {
			t.Errorf("missing command: end %v stderr %q", c.end, c.stderr.String())
		}
	})
}

func TestProcessBackgroundStdinConnectList(t *testing.T) {
	e := envdtest.Start(t)
	forEachProtocol(t, e, func(t *testing.T, cl processconnect.ProcessClient) {
		ctx := envdtest.Ctx(t, 20*time.Second)
		tag := "bg-" + t.Name()
		// cat until EOF, then linger so that CloseStdin can be repeated.
		stream, err := cl.Start(ctx, connect.NewRequest(&procpb.StartRequest{
			Process: &procpb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", "cat; echo EOF; sleep 30"}}, Tag: &tag, Stdin: proto.Bool(true),
		}))
		if err != nil {
			t.Fatal(err)
		}
		if !stream.Receive() {
			t.Fatalf("no start event: %v", stream.Err())
		}
		pid := stream.Msg().GetEvent().GetStart().GetPid()
		stream.Close() // closing the Start stream must not kill the process

		list, err := cl.List(ctx, connect.NewRequest(&procpb.ListRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, p := range list.Msg.GetProcesses() {
			if p.GetPid() == pid && p.GetTag() == tag && p.GetConfig().GetCmd() == "/bin/sh" {
				found = true
			}
		}
		if !found {
			t.Fatalf("pid %d tag %s not in list %v", pid, tag, list.Msg)
		}

		sel := &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Tag{Tag: tag}}
		conn, err := cl.Connect(ctx, connect.NewRequest(&procpb.ConnectRequest{Process: sel}))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if !conn.Receive() || conn.Msg().GetEvent().GetStart().GetPid() != pid {
			t.Fatalf("connect start: %v %v", conn.Msg(), conn.Err())
		}
		if _, err := cl.SendInput(ctx, connect.NewRequest(&procpb.SendInputRequest{
			Process: sel, Input: &procpb.ProcessInput{Input: &procpb.ProcessInput_Stdin{Stdin: []byte("hello\n")}},
		})); err != nil {
			t.Fatal(err)
		}
		var c collected
		for conn.Receive() {
			c.add(conn.Msg().GetEvent())
			if strings.Contains(c.stdout.String(), "hello\n") {
				break
			}
		}
		if _, err := cl.CloseStdin(ctx, connect.NewRequest(&procpb.CloseStdinRequest{Process: sel})); err != nil {
			t.Fatal(err)
		}
		for !strings.Contains(c.stdout.String(), "EOF\n") && conn.Receive() {
			c.add(conn.Msg().GetEvent())
		}
		if !strings.Contains(c.stdout.String(), "hello\nEOF\n") {
			t.Fatalf("stdout after CloseStdin %q (%v)", c.stdout.String(), conn.Err())
		}
		// Idempotent.
		if _, err := cl.CloseStdin(ctx, connect.NewRequest(&procpb.CloseStdinRequest{Process: sel})); err != nil {
			t.Fatalf("second CloseStdin: %v", err)
		}
		if _, err := cl.SendSignal(ctx, connect.NewRequest(&procpb.SendSignalRequest{Process: sel, Signal: procpb.Signal_SIGNAL_SIGKILL})); err != nil {
			t.Fatal(err)
		}
		for conn.Receive() {
			c.add(conn.Msg().GetEvent())
		}
		if err := conn.Err(); err != nil {
			t.Fatal(err)
		}
		if c.end == nil || c.end.GetStatus() != "signal: killed" {
			t.Fatalf("end %v", c.end)
		}
	})
}

func TestProcessStreamInput(t *testing.T) {
	e := envdtest.Start(t)
	for _, p := range envdtest.Protocols() {
		t.Run(p.Name, func(t *testing.T) {
			cl := processconnect.NewProcessClient(p.Client, e.URL, p.Options...)
			ctx := envdtest.Ctx(t, 20*time.Second)
			tag := "si-" + p.Name
			start, err := cl.Start(ctx, connect.NewRequest(&procpb.StartRequest{
				Process: sh(`head -c 6; echo; exit 5`), Tag: &tag, Stdin: proto.Bool(true),
			}))
			if err != nil {
				t.Fatal(err)
			}
			defer start.Close()
			if !start.Receive() {
				t.Fatal(start.Err())
			}
			sel := &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Tag{Tag: tag}}
			in := cl.StreamInput(ctx)
			msgs := []*procpb.StreamInputRequest{
				{Event: &procpb.StreamInputRequest_Start{Start: &procpb.StreamInputRequest_StartEvent{Process: sel}}},
				{Event: &procpb.StreamInputRequest_Data{Data: &procpb.StreamInputRequest_DataEvent{Input: &procpb.ProcessInput{Input: &procpb.ProcessInput_Stdin{Stdin: []byte("abc")}}}}},
				{Event: &procpb.StreamInputRequest_Keepalive{Keepalive: &procpb.StreamInputRequest_KeepAlive{}}},
				{Event: &procpb.StreamInputRequest_Data{Data: &procpb.StreamInputRequest_DataEvent{Input: &procpb.ProcessInput{Input: &procpb.ProcessInput_Stdin{Stdin: []byte("def")}}}}},
			}
			for _, m := range msgs {
				if err := in.Send(m); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := in.CloseAndReceive(); err != nil {
				t.Fatal(err)
			}
			var c collected
			for start.Receive() {
				c.add(start.Msg().GetEvent())
			}
			if c.stdout.String() != "abcdef\n" || c.end.GetExitCode() != 5 {
				t.Fatalf("stdout %q end %v", c.stdout.String(), c.end)
			}

			// Data before start is a precondition failure, not a crash.
			in = cl.StreamInput(ctx)
			_ = in.Send(msgs[1])
			_, err = in.CloseAndReceive()
			if connect.CodeOf(err) != connect.CodeFailedPrecondition {
				t.Fatalf("data before start: %v", err)
			}
		})
	}
}

func TestProcessPTY(t *testing.T) {
	e := envdtest.Start(t)
	forEachProtocol(t, e, func(t *testing.T, cl processconnect.ProcessClient) {
		ctx := envdtest.Ctx(t, 20*time.Second)
		tag := "pty-" + t.Name()
		stream, err := cl.Start(ctx, connect.NewRequest(&procpb.StartRequest{
			Process: &procpb.ProcessConfig{Cmd: "/bin/bash", Args: []string{"--norc", "--noprofile", "-i"}, Envs: map[string]string{"PS1": "$ "}},
			Pty:     &procpb.PTY{Size: &procpb.PTY_Size{Cols: 80, Rows: 24}},
			Tag:     &tag,
		}))
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Close()
		var c collected
		if !stream.Receive() {
			t.Fatal(stream.Err())
		}
		c.add(stream.Msg().GetEvent())
		sel := &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Pid{Pid: c.pid}}
		send := func(s string) {
			if _, err := cl.SendInput(ctx, connect.NewRequest(&procpb.SendInputRequest{
				Process: sel, Input: &procpb.ProcessInput{Input: &procpb.ProcessInput_Pty{Pty: []byte(s)}},
			})); err != nil {
				t.Fatal(err)
			}
		}
		waitFor := func(s string) {
			for !strings.Contains(c.pty.String(), s) {
				if !stream.Receive() {
					t.Fatalf("stream ended waiting for %q: %v; pty %q", s, stream.Err(), c.pty.String())
				}
				c.add(stream.Msg().GetEvent())
			}
		}
		send("stty size\n")
		waitFor("24 80")
		if _, err := cl.Update(ctx, connect.NewRequest(&procpb.UpdateRequest{
			Process: sel, Pty: &procpb.PTY{Size: &procpb.PTY_Size{Cols: 100, Rows: 30}},
		})); err != nil {
			t.Fatal(err)
		}
		send("stty size\n")
		waitFor("30 100")
		// Stdin RPCs are for pipes; a PTY takes pty input.
		if _, err := cl.CloseStdin(ctx, connect.NewRequest(&procpb.CloseStdinRequest{Process: sel})); err == nil {
			t.Error("CloseStdin on a PTY succeeded")
		}
		if _, err := cl.SendSignal(ctx, connect.NewRequest(&procpb.SendSignalRequest{Process: sel, Signal: procpb.Signal_SIGNAL_SIGKILL})); err != nil {
			t.Fatal(err)
		}
		for stream.Receive() {
			c.add(stream.Msg().GetEvent())
		}
		want := &procpb.ProcessEvent_EndEvent{ExitCode: -1, Exited: false, Status: "signal: killed", Error: proto.String("signal: killed")}
		if !proto.Equal(c.end, want) {
			t.Fatalf("end %v want %v", c.end, want)
		}
	})
}

func TestProcessBadInput(t *testing.T) {
	e := envdtest.Start(t)
	forEachProtocol(t, e, func(t *testing.T, cl processconnect.ProcessClient) {
		ctx := envdtest.Ctx(t, 20*time.Second)
		_, err := startAll(t, ctx, cl, &procpb.StartRequest{Process: sh("true")}, "nosuchuser")
		if connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), "invalid username: 'nosuchuser'") {
			t.Errorf("unknown user: %v", err)
		}
		cwd := "/no/such/dir"
		_, err = startAll(t, ctx, cl, &procpb.StartRequest{Process: &procpb.ProcessConfig{Cmd: "/bin/true", Cwd: &cwd}}, "")
		if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "cwd '/no/such/dir' does not exist") {
			t.Errorf("missing cwd: %v", err)
		}
		pidSel := &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Pid{Pid: 999999}}
		tagSel := &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Tag{Tag: "nosuchtag"}}
		_, err = cl.SendSignal(ctx, connect.NewRequest(&procpb.SendSignalRequest{Process: pidSel, Signal: procpb.Signal_SIGNAL_SIGTERM}))
		if connect.CodeOf(err) != connect.CodeNotFound || !strings.Contains(err.Error(), "process with pid 999999 not found") {
			t.Errorf("unknown pid: %v", err)
		}
		conn, err := cl.Connect(ctx, connect.NewRequest(&procpb.ConnectRequest{Process: tagSel}))
		if err == nil {
			for conn.Receive() {
			}
			err = conn.Err()
			conn.Close()
		}
		if connect.CodeOf(err) != connect.CodeNotFound || !strings.Contains(err.Error(), "process with tag nosuchtag not found") {
			t.Errorf("unknown tag: %v", err)
		}
		tag := "sig-" + t.Name()
		s, err := cl.Start(ctx, connect.NewRequest(&procpb.StartRequest{Process: &procpb.ProcessConfig{Cmd: "/bin/sleep", Args: []string{"30"}}, Tag: &tag, Stdin: proto.Bool(false)}))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		s.Receive()
		sel := &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Tag{Tag: tag}}
		_, err = cl.SendSignal(ctx, connect.NewRequest(&procpb.SendSignalRequest{Process: sel, Signal: procpb.Signal(2)}))
		if connect.CodeOf(err) != connect.CodeUnimplemented || !strings.Contains(err.Error(), "invalid signal") {
			t.Errorf("unsupported signal: %v", err)
		}
		_, err = cl.SendInput(ctx, connect.NewRequest(&procpb.SendInputRequest{Process: sel, Input: &procpb.ProcessInput{Input: &procpb.ProcessInput_Stdin{Stdin: []byte("x")}}}))
		if err == nil || !strings.Contains(err.Error(), "stdin not enabled or closed") {
			t.Errorf("stdin disabled: %v", err)
		}
		if _, err := cl.SendSignal(ctx, connect.NewRequest(&procpb.SendSignalRequest{Process: sel, Signal: procpb.Signal_SIGNAL_SIGTERM})); err != nil {
			t.Fatal(err)
		}
		var c collected
		for s.Receive() {
			c.add(s.Msg().GetEvent())
		}
		if c.end.GetStatus() != "signal: terminated" || c.end.GetExitCode() != -1 {
			t.Errorf("SIGTERM end %v", c.end)
		}
	})
}

func TestProcessKillDeadline(t *testing.T) {
	e := envdtest.Start(t)
	cl := processconnect.NewProcessClient(http.DefaultClient, e.URL)
	tag := "deadline"
	// Long enough for the start event on a loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	s, err := cl.Start(ctx, connect.NewRequest(&procpb.StartRequest{Process: &procpb.ProcessConfig{Cmd: "/bin/sleep", Args: []string{"30"}}, Tag: &tag}))
	if err != nil {
		t.Fatal(err)
	}
	if !s.Receive() {
		t.Fatalf("no start event: %v", s.Err())
	}
	pid := s.Msg().GetEvent().GetStart().GetPid()
	if pid == 0 {
		t.Fatalf("first event is not the start: %v", s.Msg())
	}
	s.Close()
	// The deadline kills the process even though the stream is gone.
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(int(pid), 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still alive after its Connect-Timeout-Ms deadline", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestMalformedRequests(t *testing.T) {
	e := envdtest.Start(t)
	post := func(path, ctype string, body []byte) (*http.Response, string) {
		req, _ := http.NewRequest(http.MethodPost, e.URL+path, bytes.NewReader(body))
		req.Header.Set("Content-Type", ctype)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(res.Body)
		return res, b.String()
	}
	res, body := post("/process.Process/List", "application/json", []byte("{bad json"))
	if res.StatusCode != http.StatusBadRequest || !strings.Contains(body, `"invalid_argument"`) {
		t.Errorf("bad JSON: %d %s", res.StatusCode, body)
	}
	res, body = post("/process.Process/SendSignal", "application/proto", []byte{0xff, 0xff, 0xff})
	if res.StatusCode != http.StatusBadRequest || !strings.Contains(body, `"invalid_argument"`) {
		t.Errorf("bad proto: %d %s", res.StatusCode, body)
	}
	// A streaming envelope that promises 100 bytes and carries 3.
	frame := []byte{0, 0, 0, 0, 100, '{', '}', ' '}
	res, body = post("/process.Process/Start", "application/connect+json", frame)
	if res.StatusCode != http.StatusOK || !strings.Contains(body, `"code"`) {
		t.Errorf("truncated frame: %d %q", res.StatusCode, body)
	}
	res, body = post("/process.Process/Nope", "application/json", []byte("{}"))
	if res.StatusCode != http.StatusNotFound {
		t.Errorf("unknown method: %d %s", res.StatusCode, body)
	}
	// The tree survived all of it.
	cl := processconnect.NewProcessClient(http.DefaultClient, e.URL)
	if _, err := cl.List(envdtest.Ctx(t, 5*time.Second), connect.NewRequest(&procpb.ListRequest{})); err != nil {
		t.Fatal(err)
	}
}

func TestPluginCrashRestart(t *testing.T) {
	e := envdtest.Start(t)
	cl := processconnect.NewProcessClient(http.DefaultClient, e.URL, connect.WithProtoJSON())
	old := e.PluginPid("envd-proc")
	if old == 0 {
		t.Fatal("no envd-proc child")
	}
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ctx := envdtest.Ctx(t, 20*time.Second)
	// An RPC racing the crash either succeeds or answers unavailable
	// naming the plugin; it never hangs.
	t0 := time.Now()
	if _, err := cl.List(ctx, connect.NewRequest(&procpb.ListRequest{})); err != nil {
		if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "envd-proc") {
			t.Fatalf("RPC during the crash: %v", err)
		}
	}
	if d := time.Since(t0); d > 10*time.Second {
		t.Fatalf("RPC during the crash took %v", d)
	}
	for e.PluginPid("envd-proc") == old || e.PluginPid("envd-proc") == 0 {
		if ctx.Err() != nil {
			t.Fatal("envd-proc was not restarted")
		}
		time.Sleep(5 * time.Millisecond)
	}
	c, err := startAll(t, ctx, cl, &procpb.StartRequest{Process: sh("echo back")}, "")
	if err != nil {
		t.Fatalf("first RPC after kill -9: %v", err)
	}
	if c.stdout.String() != "back\n" {
		t.Fatalf("stdout %q", c.stdout.String())
	}
	if now := e.PluginPid("envd-proc"); now == 0 || now == old {
		t.Fatalf("envd-proc pid %d after restart (was %d)", now, old)
	}
	select {
	case <-e.Done():
		t.Fatal("envd-init exited")
	default:
	}
}

func TestBootCmdAndSigterm(t *testing.T) {
	marker := t.TempDir() + "/boot"
	e := envdtest.Start(t, "--cmd", fmt.Sprintf("echo started > %s; exec sleep 300", marker))
	cl := processconnect.NewProcessClient(http.DefaultClient, e.URL)
	// --cmd runs in root's login shell: a host profile that stalls (pyenv
	// waits up to 60 s on a lock another killed shell left) must not fail it.
	ctx := envdtest.Ctx(t, 90*time.Second)
	var pid uint32
	for pid == 0 {
		list, err := cl.List(ctx, connect.NewRequest(&procpb.ListRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range list.Msg.GetProcesses() {
			if p.GetTag() == "startCmd" {
				pid = p.GetPid()
			}
		}
		if ctx.Err() != nil {
			t.Fatal("--cmd process never listed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// bash -l reads the profile first.
	for {
		if _, err := os.Stat(marker); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("--cmd did not run")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := e.Stop(); err != nil {
		t.Fatalf("SIGTERM exit: %v", err)
	}
	// User processes die with the tree.
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(int(pid), 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("user process %d survived SIGTERM of envd-init", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("timed out")
	}
}

func TestKeepaliveAcrossTheHop(t *testing.T) {
	e := envdtest.Start(t)
	forEachProtocol(t, e, func(t *testing.T, cl processconnect.ProcessClient) {
		ctx := envdtest.Ctx(t, 20*time.Second)
		req := connect.NewRequest(&procpb.StartRequest{Process: sh("sleep 2.3")})
		req.Header().Set("Keepalive-Ping-Interval", "1")
		stream, err := cl.Start(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Close()
		var c collected
		for stream.Receive() {
			c.add(stream.Msg().GetEvent())
		}
		n := strings.Count(strings.Join(c.order, ","), "keepalive")
		if n < 1 || n > 3 || c.end == nil {
			t.Fatalf("events %v (%v)", c.order, stream.Err())
		}
	})
}

// A lone client that reads slower than the process writes loses nothing:
// the process waits on its pipe (as with the reference) instead of the
// stream being cut off.
func TestSlowReaderGetsAllOutput(t *testing.T) {
	e := envdtest.Start(t)
	cl := processconnect.NewProcessClient(http.DefaultClient, e.URL)
	ctx := envdtest.Ctx(t, 60*time.Second)
	const size = 24 << 20
	stream, err := cl.Start(ctx, connect.NewRequest(&procpb.StartRequest{Process: sh(fmt.Sprintf("head -c %d /dev/zero", size))}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	got, msgs := 0, 0
	var end *procpb.ProcessEvent_EndEvent
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		got += len(ev.GetData().GetStdout())
		if e := ev.GetEnd(); e != nil {
			end = e
		}
		// Stall long enough for every buffer on the way to fill.
		if msgs++; msgs < 40 {
			time.Sleep(25 * time.Millisecond)
		}
	}
	if err := stream.Err(); err != nil || got != size || end.GetExitCode() != 0 {
		t.Fatalf("got %d of %d bytes, end %v, err %v", got, size, end, err)
	}
}
