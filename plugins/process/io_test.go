package process

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	procpb "github.com/envd-project/envd/gen/process"
)

func ptyReq(cmd string, cols, rows uint32, args ...string) *procpb.StartRequest {
	r := cmdReq(cmd, args...)
	r.Pty = &procpb.PTY{Size: &procpb.PTY_Size{Cols: cols, Rows: rows}}
	return r
}

func sendPTY(t *testing.T, s *Service, pid uint32, data string) {
	t.Helper()
	_, err := s.SendInput(context.Background(), &procpb.SendInputRequest{
		Process: pidSel(pid),
		Input:   &procpb.ProcessInput{Input: &procpb.ProcessInput_Pty{Pty: []byte(data)}},
	})
	must(t, err)
}

func sendStdin(s *Service, sel *procpb.ProcessSelector, data string) error {
	_, err := s.SendInput(context.Background(), &procpb.SendInputRequest{
		Process: sel,
		Input:   &procpb.ProcessInput{Input: &procpb.ProcessInput_Stdin{Stdin: []byte(data)}},
	})
	return err
}

func TestPTYEchoAndResize(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	req := ptyReq("/bin/sh", 100, 30, "-i")
	req.Stdin = ptr(false) // ignored in PTY mode
	st := startStream(t, s, context.Background(), req)
	pid := st.waitPID(t)

	sendPTY(t, s, pid, "echo hi-$((40+2))\n")
	st.waitOutput(t, "echo hi-$((40+2))") // the terminal echoes the keystrokes
	st.waitOutput(t, "hi-42\r\n")         // and the output has CRLF line ends

	sendPTY(t, s, pid, "stty size\n")
	st.waitOutput(t, "30 100\r\n")

	_, err := s.Update(context.Background(), &procpb.UpdateRequest{
		Process: pidSel(pid),
		Pty:     &procpb.PTY{Size: &procpb.PTY_Size{Cols: 120, Rows: 50}},
	})
	must(t, err)
	sendPTY(t, s, pid, "stty size\n")
	st.waitOutput(t, "50 120\r\n")

	// Update without pty is a no-op.
	_, err = s.Update(context.Background(), &procpb.UpdateRequest{Process: pidSel(pid)})
	must(t, err)

	// stdin and close-stdin are refused for a PTY.
	err = sendStdin(s, pidSel(pid), "x")
	requireCode(t, err, connect.CodeInternal, "error writing to stdin: tty assigned to process — input should be written to the pty, not the stdin")
	_, err = s.CloseStdin(context.Background(), &procpb.CloseStdinRequest{Process: pidSel(pid)})
	requireCode(t, err, connect.CodeUnknown, "error closing stdin: cannot close stdin for PTY process — send Ctrl+D (0x04) instead")

	sendPTY(t, s, pid, "exit 5\n")
	st.wait(t)
	if st.err != nil || st.end.GetExitCode() != 5 {
		t.Errorf("end %v err %v", st.end, st.err)
	}
	if st.stdout.Len()+st.stderr.Len() != 0 {
		t.Error("pipe output events in PTY mode")
	}
}

func TestPTYCtrlDEndsCat(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	st := startStream(t, s, context.Background(), ptyReq("/bin/cat", 80, 24))
	pid := st.waitPID(t)
	sendPTY(t, s, pid, "abc\n")
	st.waitOutput(t, "abc\r\nabc\r\n") // echo, then cat's copy
	sendPTY(t, s, pid, "\x04")
	st.wait(t)
	if st.end.GetExitCode() != 0 {
		t.Errorf("end = %v", st.end)
	}
}

func TestPTYSizeAtStart(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	st := startStream(t, s, context.Background(), ptyReq("/bin/stty", 132, 43, "size")).wait(t)
	if got := st.pty.String(); got != "43 132\r\n" {
		t.Errorf("stty size = %q", got)
	}
	// The child has the terminal as its controlling tty in its own session.
	st = startStream(t, s, context.Background(), ptyReq("/bin/sh", 80, 24, "-c", "ps -o sid=,tty= -p $$; echo $$")).wait(t)
	f := strings.Fields(st.pty.String())
	if len(f) != 3 || f[0] != f[2] || !strings.HasPrefix(f[1], "pts/") {
		t.Errorf("session/tty: %q", st.pty.String())
	}
}

func TestStdinPipe(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	// The process outlives its stdin's EOF, so the second CloseStdin still
	// finds it (a process that ended is not_found).
	st := startStream(t, s, context.Background(), shReq("cat; echo; exec sleep 30")) // stdin absent → pipe
	pid := st.waitPID(t)
	must(t, sendStdin(s, pidSel(pid), "hello "))
	must(t, sendStdin(s, pidSel(pid), "world"))
	st.waitOutput(t, "hello world")
	for i := 0; i < 2; i++ { // idempotent
		_, err := s.CloseStdin(context.Background(), &procpb.CloseStdinRequest{Process: pidSel(pid)})
		must(t, err)
	}
	st.waitOutput(t, "hello world\n") // cat saw EOF
	_, err := s.SendSignal(context.Background(), &procpb.SendSignalRequest{Process: pidSel(pid), Signal: procpb.Signal_SIGNAL_SIGKILL})
	must(t, err)
	st.wait(t)
	if st.stdout.String() != "hello world\n" || st.end.GetStatus() != "signal: killed" {
		t.Errorf("stdout %q end %v", st.stdout.String(), st.end)
	}

	// stdin: true behaves the same.
	req := cmdReq("/bin/cat")
	req.Stdin = ptr(true)
	st = startStream(t, s, context.Background(), req)
	pid = st.waitPID(t)
	must(t, sendStdin(s, pidSel(pid), "x"))
	_, err = s.CloseStdin(context.Background(), &procpb.CloseStdinRequest{Process: pidSel(pid)})
	must(t, err)
	st.wait(t)
	if st.stdout.String() != "x" {
		t.Errorf("stdin true: %q", st.stdout.String())
	}
	_ = pid
}

func TestStdinErrors(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	req := shReq("cat; sleep 30") // cat sees /dev/null and ends; sleep keeps the process
	req.Stdin = ptr(false)
	st := startStream(t, s, context.Background(), req)
	pid := st.waitPID(t)
	err := sendStdin(s, pidSel(pid), "x")
	requireCode(t, err, connect.CodeInternal, "error writing to stdin: stdin not enabled or closed")
	// Closing a disabled stdin succeeds.
	_, err = s.CloseStdin(context.Background(), &procpb.CloseStdinRequest{Process: pidSel(pid)})
	must(t, err)

	_, err = s.SendInput(context.Background(), &procpb.SendInputRequest{
		Process: pidSel(pid),
		Input:   &procpb.ProcessInput{Input: &procpb.ProcessInput_Pty{Pty: []byte("x")}},
	})
	requireCode(t, err, connect.CodeInternal, "error writing to tty: tty not assigned to process — input should be written to the stdin, not the tty")

	_, err = s.SendInput(context.Background(), &procpb.SendInputRequest{Process: pidSel(pid), Input: &procpb.ProcessInput{}})
	requireCode(t, err, connect.CodeUnimplemented, "")
	_, err = s.SendInput(context.Background(), &procpb.SendInputRequest{Process: pidSel(pid)})
	requireCode(t, err, connect.CodeUnimplemented, "")
	_, err = s.SendInput(context.Background(), &procpb.SendInputRequest{Input: &procpb.ProcessInput{Input: &procpb.ProcessInput_Stdin{}}})
	requireCode(t, err, connect.CodeUnimplemented, "")
	err = sendStdin(s, pidSel(4000001), "x")
	requireCode(t, err, connect.CodeNotFound, "process with pid 4000001 not found")

	_, err = s.Update(context.Background(), &procpb.UpdateRequest{Process: pidSel(pid), Pty: &procpb.PTY{Size: &procpb.PTY_Size{Cols: 1, Rows: 1}}})
	requireCode(t, err, connect.CodeInternal, "error resizing tty: tty not assigned to process")
	_, err = s.Update(context.Background(), &procpb.UpdateRequest{Process: pidSel(pid)})
	must(t, err)
	_, err = s.Update(context.Background(), &procpb.UpdateRequest{Process: tagSel("none")})
	requireCode(t, err, connect.CodeNotFound, "process with tag none not found")

	// After CloseStdin, writes report the closed stdin.
	st2 := startStream(t, s, context.Background(), shReq("sleep 30"))
	pid2 := st2.waitPID(t)
	_, err = s.CloseStdin(context.Background(), &procpb.CloseStdinRequest{Process: pidSel(pid2)})
	must(t, err)
	err = sendStdin(s, pidSel(pid2), "x")
	requireCode(t, err, connect.CodeInternal, "error writing to stdin: stdin not enabled or closed")
}

// A write to a child that does not read blocks only until the call's
// context ends, and leaves no deadline behind for the next write.
func TestSendInputHonoursContext(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	st := startStream(t, s, context.Background(), shReq("sleep 1; cat"))
	pid := st.waitPID(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := s.SendInput(ctx, &procpb.SendInputRequest{
		Process: pidSel(pid),
		Input:   &procpb.ProcessInput{Input: &procpb.ProcessInput_Stdin{Stdin: bytes.Repeat([]byte("x"), 1<<20)}},
	})
	requireCode(t, err, connect.CodeInternal, "")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want the deadline", err)
	}
	must(t, sendStdin(s, pidSel(pid), "END"))
	st.waitOutput(t, "END")
}

type recvScript struct{ msgs []*procpb.StreamInputRequest }

func (r *recvScript) recv() (*procpb.StreamInputRequest, error) {
	if len(r.msgs) == 0 {
		return nil, io.EOF
	}
	m := r.msgs[0]
	r.msgs = r.msgs[1:]
	return m, nil
}

func siStart(sel *procpb.ProcessSelector) *procpb.StreamInputRequest {
	return &procpb.StreamInputRequest{Event: &procpb.StreamInputRequest_Start{Start: &procpb.StreamInputRequest_StartEvent{Process: sel}}}
}

func siData(in *procpb.ProcessInput) *procpb.StreamInputRequest {
	return &procpb.StreamInputRequest{Event: &procpb.StreamInputRequest_Data{Data: &procpb.StreamInputRequest_DataEvent{Input: in}}}
}

func siKeepalive() *procpb.StreamInputRequest {
	return &procpb.StreamInputRequest{Event: &procpb.StreamInputRequest_Keepalive{Keepalive: &procpb.StreamInputRequest_KeepAlive{}}}
}

func TestStreamInput(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	stdin := func(s string) *procpb.ProcessInput {
		return &procpb.ProcessInput{Input: &procpb.ProcessInput_Stdin{Stdin: []byte(s)}}
	}

	r := &recvScript{msgs: []*procpb.StreamInputRequest{siData(stdin("x"))}}
	_, err := s.StreamInput(context.Background(), r.recv)
	requireCode(t, err, connect.CodeFailedPrecondition, "")

	r = &recvScript{msgs: []*procpb.StreamInputRequest{siKeepalive(), siStart(pidSel(4000002))}}
	_, err = s.StreamInput(context.Background(), r.recv)
	requireCode(t, err, connect.CodeNotFound, "process with pid 4000002 not found")

	r = &recvScript{msgs: []*procpb.StreamInputRequest{{}}}
	_, err = s.StreamInput(context.Background(), r.recv)
	requireCode(t, err, connect.CodeUnimplemented, "")

	st := startStream(t, s, context.Background(), func() *procpb.StartRequest {
		r := cmdReq("/bin/cat")
		r.Tag = ptr("si")
		return r
	}())
	st.waitPID(t)
	r = &recvScript{msgs: []*procpb.StreamInputRequest{
		siStart(tagSel("si")), siData(stdin("one ")), siKeepalive(), siData(stdin("two")),
	}}
	resp, err := s.StreamInput(context.Background(), r.recv)
	if err != nil || resp == nil {
		t.Fatalf("StreamInput: %v", err)
	}
	st.waitOutput(t, "one two")

	r = &recvScript{msgs: []*procpb.StreamInputRequest{siStart(tagSel("si")), siData(&procpb.ProcessInput{})}}
	_, err = s.StreamInput(context.Background(), r.recv)
	requireCode(t, err, connect.CodeUnimplemented, "")

	recvErr := errors.New("broken transport")
	_, err = s.StreamInput(context.Background(), func() (*procpb.StreamInputRequest, error) { return nil, recvErr })
	if !errors.Is(err, recvErr) {
		t.Errorf("recv error not passed on: %v", err)
	}
}

func TestSelectors(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	start := func(tag *string) uint32 {
		r := cmdReq("/bin/sleep", "30")
		r.Tag = tag
		return startStream(t, s, context.Background(), r).waitPID(t)
	}
	// Several tagged processes: a tag lookup must search them all.
	pOther := start(ptr("other"))
	pUntagged := start(nil)
	pA1 := start(ptr("a"))
	pA2 := start(ptr("a"))
	pB := start(ptr("b"))
	_ = pUntagged

	for tag, want := range map[string]uint32{"a": pA1, "b": pB, "other": pOther} {
		p, err := s.lookup(tagSel(tag), false)
		if err != nil || p.pid != want {
			t.Errorf("tag %s → %v %v, want pid %d", tag, p, err, want)
		}
	}
	_, err := s.lookup(tagSel("missing"), false)
	requireCode(t, err, connect.CodeNotFound, "process with tag missing not found")
	_, err = s.lookup(pidSel(4000003), false)
	requireCode(t, err, connect.CodeNotFound, "process with pid 4000003 not found")
	_, err = s.lookup(nil, false)
	requireCode(t, err, connect.CodeUnimplemented, "")
	_, err = s.lookup(&procpb.ProcessSelector{}, false)
	requireCode(t, err, connect.CodeUnimplemented, "")

	c := connectStream(t, s, context.Background(), nil).wait(t)
	requireCode(t, c.err, connect.CodeUnimplemented, "")
	c = connectStream(t, s, context.Background(), tagSel("missing")).wait(t)
	requireCode(t, c.err, connect.CodeNotFound, "process with tag missing not found")
	if c.pid != 0 {
		t.Error("start event before not_found")
	}

	// Killing the first "a" makes the second one the match.
	_, err = s.SendSignal(context.Background(), &procpb.SendSignalRequest{Process: tagSel("a"), Signal: procpb.Signal_SIGNAL_SIGKILL})
	must(t, err)
	eventually(t, "first a reaped", func() bool {
		p, err := s.lookup(tagSel("a"), false)
		return err == nil && p.pid == pA2
	})
}

func TestList(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	r1 := cmdReq("/bin/sleep", "30")
	r1.Process.Envs = map[string]string{"K": "V"}
	r1.Tag = ptr("t1")
	r2 := ptyReq("/bin/sleep", 80, 24, "30")
	r2.Process.Cwd = ptr("~")
	r3 := cmdReq("/bin/sleep", "30")
	r3.Tag = ptr(SystemTag)
	p1 := startStream(t, s, context.Background(), r1).waitPID(t)
	p2 := startStream(t, s, context.Background(), r2).waitPID(t)
	p3 := startStream(t, s, context.Background(), r3).waitPID(t)

	l, err := s.List(context.Background(), &procpb.ListRequest{})
	must(t, err)
	ps := l.GetProcesses()
	if len(ps) != 3 {
		t.Fatalf("List = %v", ps)
	}
	if ps[0].GetPid() != p1 || ps[0].GetTag() != "t1" || ps[0].GetConfig().GetEnvs()["K"] != "V" || ps[0].GetConfig().Cwd != nil {
		t.Errorf("first = %v", ps[0])
	}
	if ps[1].GetPid() != p2 || ps[1].Tag != nil || ps[1].GetConfig().GetCwd() != "~" {
		t.Errorf("second = %v (cwd must be as sent)", ps[1])
	}
	if ps[2].GetPid() != p3 || ps[2].GetTag() != SystemTag || strings.Join(ps[2].GetConfig().GetArgs(), " ") != "30" {
		t.Errorf("third = %v", ps[2])
	}

	_, err = s.SendSignal(context.Background(), &procpb.SendSignalRequest{Process: pidSel(p2), Signal: procpb.Signal_SIGNAL_SIGKILL})
	must(t, err)
	eventually(t, "killed process to leave the list", func() bool {
		l, _ := s.List(context.Background(), &procpb.ListRequest{})
		return len(l.GetProcesses()) == 2
	})
}

func TestConnectAndRetention(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	s.retain = 500 * time.Millisecond
	req := shReq(`read x; echo "got $x"; exit 4`)
	req.Tag = ptr("job")
	st := startStream(t, s, context.Background(), req)
	pid := st.waitPID(t)

	c1 := connectStream(t, s, context.Background(), pidSel(pid))
	c2 := connectStream(t, s, context.Background(), tagSel("job"))
	if c1.waitPID(t) != pid || c2.waitPID(t) != pid {
		t.Fatal("connect start events carry the wrong pid")
	}
	must(t, sendStdin(s, pidSel(pid), "line\n"))
	for _, c := range []*stream{st, c1, c2} {
		c.wait(t)
		if c.err != nil || c.stdout.String() != "got line\n" || c.end.GetExitCode() != 4 || c.end.GetError() != "exit status 4" {
			t.Errorf("subscriber: err %v stdout %q end %v", c.err, c.stdout.String(), c.end)
		}
	}

	// Retained: start then end straight away, by pid and by tag.
	for _, sel := range []*procpb.ProcessSelector{pidSel(pid), tagSel("job")} {
		c := connectStream(t, s, context.Background(), sel).wait(t)
		if c.err != nil || c.pid != pid || c.end.GetExitCode() != 4 || c.output() != "" {
			t.Errorf("retained %v: err %v pid %d end %v", sel, c.err, c.pid, c.end)
		}
	}
	// Only Connect sees retained processes.
	_, err := s.SendSignal(context.Background(), &procpb.SendSignalRequest{Process: pidSel(pid), Signal: procpb.Signal_SIGNAL_SIGKILL})
	requireCode(t, err, connect.CodeNotFound, "")
	l, _ := s.List(context.Background(), &procpb.ListRequest{})
	if len(l.GetProcesses()) != 0 {
		t.Errorf("List shows exited processes: %v", l)
	}

	eventually(t, "retention to expire", func() bool {
		c := connectStream(t, s, context.Background(), pidSel(pid)).wait(t)
		return connect.CodeOf(c.err) == connect.CodeNotFound
	})

	// A new process with the same tag evicts the retained entry.
	s.retain = time.Minute
	r := shReq("exit 1")
	r.Tag = ptr("dup")
	startStream(t, s, context.Background(), r).wait(t)
	r = cmdReq("/bin/sleep", "30")
	r.Tag = ptr("dup")
	live := startStream(t, s, context.Background(), r).waitPID(t)
	c := connectStream(t, s, context.Background(), tagSel("dup"))
	if c.waitPID(t) != live {
		t.Errorf("tag resolved to the retained process, not the live one")
	}
}

// Output produced while nobody is subscribed is dropped, not replayed.
func TestOutputWithoutSubscriberDropped(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	st := startStream(t, s, context.Background(), shReq(`echo early; read x; echo late`))
	pid := st.waitPID(t)
	st.waitOutput(t, "early\n")
	st.cancel()
	st.wait(t)
	// Unsubscribed now: this output goes nowhere.
	c := connectStream(t, s, context.Background(), pidSel(pid))
	c.waitPID(t)
	must(t, sendStdin(s, pidSel(pid), "\n"))
	c.wait(t)
	if c.stdout.String() != "late\n" {
		t.Errorf("connect saw %q, want only the late output", c.stdout.String())
	}
}

func TestOutputChunkSizes(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	check := func(req *procpb.StartRequest, limit int, total int) {
		t.Helper()
		st, ctx := newStream(t, context.Background())
		maxChunk := 0
		n := 0
		err := s.Start(ctx, req, func(r *procpb.StartResponse) error {
			d := r.GetEvent().GetData()
			for _, b := range [][]byte{d.GetStdout(), d.GetStderr(), d.GetPty()} {
				maxChunk = max(maxChunk, len(b))
				n += len(b)
			}
			return nil
		})
		_ = st
		must(t, err)
		if maxChunk > limit || maxChunk == 0 {
			t.Errorf("largest chunk %d, limit %d", maxChunk, limit)
		}
		if n < total {
			t.Errorf("got %d bytes, want at least %d", n, total)
		}
	}
	check(cmdReq("/usr/bin/head", "-c", "1048576", "/dev/zero"), pipeChunk, 1<<20)
	check(ptyReq("/usr/bin/head", 80, 24, "-c", "262144", "/dev/zero"), ptyChunk, 1<<18)
}

func TestStartAfterShutdown(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	must(t, s.Shutdown(context.Background()))
	must(t, s.Shutdown(context.Background()))
	err := s.Start(context.Background(), cmdReq("/bin/true"), func(*procpb.StartResponse) error { return nil })
	requireCode(t, err, connect.CodeUnavailable, "")
}

func TestShutdownKillsEverything(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	pipe := startStream(t, s, context.Background(), shReq("sleep 30 & echo $!; wait"))
	pipe.waitPID(t)
	pipe.waitOutput(t, "\n")
	var grandchild int
	fmt.Sscan(strings.TrimSpace(pipe.stdout.String()), &grandchild)
	term := startStream(t, s, context.Background(), ptyReq("/bin/sh", 80, 24, "-i"))
	termPID := term.waitPID(t)
	ignorer := startStream(t, s, context.Background(), shReq("trap '' TERM; sleep 30"))
	ignorer.waitPID(t)
	conn := connectStream(t, s, context.Background(), pidSel(termPID))
	conn.waitPID(t)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	must(t, s.Shutdown(ctx))
	for _, st := range []*stream{pipe, term, ignorer, conn} {
		st.wait(t)
		if st.err != nil || st.end.GetStatus() != "signal: killed" {
			t.Errorf("stream after shutdown: err %v end %v", st.err, st.end)
		}
	}
	if alive(grandchild) {
		t.Error("grandchild in the process group survived shutdown")
	}
	l, _ := s.List(context.Background(), &procpb.ListRequest{})
	if len(l.GetProcesses()) != 0 {
		t.Errorf("List after shutdown: %v", l)
	}
	must(t, s.Shutdown(ctx)) // idempotent
}

func TestSnapshotHooks(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st := startStream(t, s, ctx, cmdReq("/bin/cat"))
	pid := st.waitPID(t)
	must(t, s.SnapshotPrepare(context.Background()))
	must(t, s.SnapshotRestored(context.Background()))
	// Streams and input still work, and the re-armed deadline still kills.
	must(t, sendStdin(s, pidSel(pid), "after restore"))
	st.waitOutput(t, "after restore")
	c := connectStream(t, s, context.Background(), pidSel(pid)).wait(t)
	if c.end.GetStatus() != "signal: killed" {
		t.Errorf("end after re-armed deadline: %v", c.end)
	}
}

// After a restore, a kill deadline that passed on the wall clock during
// the pause fires at once.
func TestSnapshotRestoredRearmsDeadlines(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	st := startStream(t, s, ctx, cmdReq("/bin/sleep", "30"))
	pid := st.waitPID(t)
	p, err := s.lookup(pidSel(pid), false)
	must(t, err)
	// Simulate the wall clock jumping past the deadline while paused.
	p.mu.Lock()
	p.deadline = time.Now().Add(-time.Second).Round(0)
	p.mu.Unlock()
	must(t, s.SnapshotRestored(context.Background()))
	st.wait(t)
	if st.end.GetStatus() != "signal: killed" {
		t.Errorf("end = %v, err %v", st.end, st.err)
	}
}

// Odd but well-formed requests get an answer, never a panic or a hang.
func TestOddRequests(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	noop := func(*procpb.StartResponse) error { return nil }

	// No request, no process config: the wrapper refuses exec "", which is
	// an exit status, not an RPC error.
	for _, req := range []*procpb.StartRequest{nil, {}} {
		st := startStream(t, s, context.Background(), req).wait(t)
		if st.err != nil || st.end == nil || st.end.GetExitCode() == 0 {
			t.Errorf("empty request %v: err %v end %v", req, st.err, st.end)
		}
	}

	// A PTY without a size, and one far beyond 16 bits, still start.
	st := startStream(t, s, context.Background(), &procpb.StartRequest{
		Process: &procpb.ProcessConfig{Cmd: "/bin/stty", Args: []string{"size"}}, Pty: &procpb.PTY{},
	}).wait(t)
	if st.err != nil || st.end == nil {
		t.Errorf("pty without size: err %v end %v", st.err, st.end)
	}
	st = startStream(t, s, context.Background(), ptyReq("/bin/stty", 1<<20, 1<<20, "size")).wait(t)
	if st.err != nil || st.pty.String() != "65535 65535\r\n" {
		t.Errorf("huge pty: err %v output %q", st.err, st.pty.String())
	}
	pty := startStream(t, s, context.Background(), ptyReq("/bin/cat", 80, 24))
	pid := pty.waitPID(t)
	_, err := s.Update(context.Background(), &procpb.UpdateRequest{Process: pidSel(pid), Pty: &procpb.PTY{}})
	must(t, err)
	_, err = s.Update(context.Background(), nil)
	requireCode(t, err, connect.CodeUnimplemented, "")

	// A cwd that is a file cannot be entered.
	req := cmdReq("/bin/true")
	req.Process.Cwd = ptr("/etc/passwd")
	requireCode(t, s.Start(context.Background(), req, noop), connect.CodeInvalidArgument, "")

	// Empty input is a successful no-op write.
	_, err = s.SendInput(context.Background(), &procpb.SendInputRequest{Process: pidSel(pid), Input: &procpb.ProcessInput{Input: &procpb.ProcessInput_Pty{}}})
	must(t, err)

	for _, call := range []func() error{
		func() error { _, err := s.SendInput(context.Background(), nil); return err },
		func() error { _, err := s.SendSignal(context.Background(), nil); return err },
		func() error { _, err := s.CloseStdin(context.Background(), nil); return err },
		func() error {
			return s.Connect(context.Background(), nil, func(*procpb.ConnectResponse) error { return nil })
		},
	} {
		requireCode(t, call(), connect.CodeUnimplemented, "")
	}
	if _, err := s.List(context.Background(), nil); err != nil {
		t.Error(err)
	}
}

// The end of a process's retention is reported once (envd-proc's idle trim
// counts it as activity, so the dropped memory goes back to the OS).
func TestForgetReportsRetentionEnd(t *testing.T) {
	t.Parallel()
	s := newService(t, nil)
	s.retain = 100 * time.Millisecond
	var forgot atomic.Int32
	s.OnForget(func() { forgot.Add(1) })
	st := startStream(t, s, context.Background(), shReq(`exit 0`))
	pid := st.waitPID(t)
	st.wait(t)
	eventually(t, "retention to expire", func() bool {
		c := connectStream(t, s, context.Background(), pidSel(pid)).wait(t)
		return connect.CodeOf(c.err) == connect.CodeNotFound
	})
	eventually(t, "the drop to be reported", func() bool { return forgot.Load() == 1 })
	time.Sleep(200 * time.Millisecond)
	if n := forgot.Load(); n != 1 {
		t.Errorf("the drop of one process reported %d times", n)
	}
}
