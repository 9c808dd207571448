package stress

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/gen/filesystem/filesystemconnect"
	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/gen/process/processconnect"
	"google.golang.org/protobuf/proto"
)

// Deadlines of one call; a call that returns later than its deadline plus
// hangGrace is a hang.
const (
	unaryDeadline  = 10 * time.Second
	streamDeadline = 10 * time.Second
	filesDeadline  = 15 * time.Second
	hangGrace      = 5 * time.Second
)

// handoffSuffix marks calls that envd-init hands to envd-fs whole (the
// client's TCP connection): /files and ListDir over HTTP/1.1.
const handoffSuffix = "[handoff]"

// uploadLog remembers what each upload sent, to check the disk afterwards.
type uploadLog struct {
	mu    sync.Mutex
	sums  map[string]string // path → sha256 of the content sent
	acked map[string]bool   // path → the client got 200
}

func newUploadLog() *uploadLog {
	return &uploadLog{sums: map[string]string{}, acked: map[string]bool{}}
}

func (l *uploadLog) sent(path string, sum string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sums[path] = sum
}

func (l *uploadLog) ack(path string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.acked[path] = true
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// clients is one client's connections in one protocol.
type clients struct {
	name  string
	h1    bool
	grpc  bool
	pc    processconnect.ProcessClient
	fc    filesystemconnect.FilesystemClient
	files *http.Client // /files always goes over HTTP/1.1
	all   []*http.Client
}

// closeIdle drops the client's keep-alive connections, so that envd-init's
// fd count measures envd-init, not how many idle connections clients hold.
func (c *clients) closeIdle() {
	for _, hc := range c.all {
		hc.CloseIdleConnections()
	}
}

func newClients(base string, kind int) *clients {
	h1 := &http.Client{Transport: tracing{&http.Transport{MaxIdleConnsPerHost: 4}}}
	h2t := &http.Transport{TLSClientConfig: &tls.Config{}}
	h2t.Protocols = new(http.Protocols)
	h2t.Protocols.SetUnencryptedHTTP2(true)
	h2 := &http.Client{Transport: tracing{h2t}}
	c := &clients{files: h1, all: []*http.Client{h1, h2}}
	var client *http.Client
	var opts []connect.ClientOption
	switch kind % 4 {
	case 0:
		c.name, client, opts = "connect-json", h1, []connect.ClientOption{connect.WithProtoJSON()}
	case 1:
		c.name, client = "connect-proto", h1
	case 2:
		c.name, client, opts = "grpc-web", h1, []connect.ClientOption{connect.WithGRPCWeb()}
	default:
		c.name, client, opts = "grpc", h2, []connect.ClientOption{connect.WithGRPC()}
	}
	c.h1 = client == h1
	c.grpc = kind%4 == 3
	c.pc = processconnect.NewProcessClient(client, base, opts...)
	c.fc = filesystemconnect.NewFilesystemClient(client, base, opts...)
	return c
}

// worker is one client of the stress run.
type worker struct {
	id       int
	base     string
	c        *clients
	dir      string // its own directory for the filesystem calls
	upDir    string // where its uploads go (checked at the end)
	fixed    string // a file every worker downloads
	fixedSum string
	uploads  *uploadLog
	tally    *tally
	rng      *rand.Rand
	n        int
	inflight *atomic.Int64
	// fsKilledDuring tells whether envd-fs was killed (SIGKILL) while a
	// call ran (chaos.fsKilledDuring).
	fsKilledDuring func(start, end time.Time) bool
}

// call runs one RPC or HTTP request under its own deadline and records
// its class.
func (w *worker) call(op string, deadline time.Duration, fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	ctx, tr := withTrace(ctx)
	w.inflight.Add(1)
	start := time.Now()
	err := fn(ctx)
	end := time.Now()
	elapsed := end.Sub(start)
	w.inflight.Add(-1)
	class := classify(ctx, tr, err)
	if (class == classNoReply || class == classTruncated) && strings.HasSuffix(op, handoffSuffix) &&
		w.fsKilledDuring != nil && w.fsKilledDuring(start, end) {
		// envd-fs held the client's connection and died: nobody is left
		// to answer. Any other call without a status is a failure.
		class += classFSKilled
	}
	note := ""
	if err != nil {
		note = fmt.Sprintf("%s: %.200v", w.c.name, err)
	}
	if elapsed > deadline+hangGrace {
		w.tally.add(op, classHung, fmt.Sprintf("%s after %v (%s)", w.c.name, elapsed.Round(time.Millisecond), class))
		return err
	}
	w.tally.add(op, class, note)
	return err
}

type op struct {
	weight int
	run    func(w *worker)
}

var ops = []op{
	{6, (*worker).stat},
	{4, (*worker).dirs},
	{3, (*worker).listDir},
	{3, (*worker).watch},
	{2, (*worker).pollWatch},
	{6, (*worker).echo},
	{3, (*worker).stdin},
	{3, (*worker).background},
	{2, (*worker).pty},
	{2, (*worker).streamInput},
	{5, (*worker).upload},
	{3, (*worker).download},
}

func (w *worker) step() {
	total := 0
	for _, o := range ops {
		total += o.weight
	}
	pick := w.rng.IntN(total)
	for _, o := range ops {
		if pick < o.weight {
			w.n++
			o.run(w)
			return
		}
		pick -= o.weight
	}
}

func (w *worker) stat() {
	path := filepath.Join(w.dir, "stat-me")
	if w.rng.IntN(2) == 0 {
		_ = os.WriteFile(path, []byte("x"), 0o644)
	}
	_ = w.call("Filesystem.Stat", unaryDeadline, func(ctx context.Context) error {
		_, err := w.c.fc.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: path}))
		if connect.CodeOf(err) == connect.CodeNotFound {
			return nil
		}
		return err
	})
}

func (w *worker) dirs() {
	d := filepath.Join(w.dir, fmt.Sprintf("d%d", w.n))
	m := filepath.Join(w.dir, fmt.Sprintf("m%d", w.n))
	_ = w.call("Filesystem.MakeDir", unaryDeadline, func(ctx context.Context) error {
		_, err := w.c.fc.MakeDir(ctx, connect.NewRequest(&fspb.MakeDirRequest{Path: filepath.Join(d, "sub")}))
		return err
	})
	_ = w.call("Filesystem.Move", unaryDeadline, func(ctx context.Context) error {
		_, err := w.c.fc.Move(ctx, connect.NewRequest(&fspb.MoveRequest{Source: d, Destination: m}))
		return err
	})
	_ = w.call("Filesystem.Remove", unaryDeadline, func(ctx context.Context) error {
		_, err := w.c.fc.Remove(ctx, connect.NewRequest(&fspb.RemoveRequest{Path: m}))
		return err
	})
	_ = w.call("Filesystem.Remove", unaryDeadline, func(ctx context.Context) error {
		_, err := w.c.fc.Remove(ctx, connect.NewRequest(&fspb.RemoveRequest{Path: d}))
		return err
	})
}

func (w *worker) listDir() {
	op := "Filesystem.ListDir"
	if w.c.h1 {
		op += handoffSuffix
	}
	_ = w.call(op, unaryDeadline, func(ctx context.Context) error {
		_, err := w.c.fc.ListDir(ctx, connect.NewRequest(&fspb.ListDirRequest{Path: filepath.Dir(w.dir), Depth: 2}))
		return err
	})
}

// watch opens a WatchDir, makes a file and waits for its event.
func (w *worker) watch() {
	name := fmt.Sprintf("watched-%d", w.n)
	_ = w.call("Filesystem.WatchDir", streamDeadline, func(ctx context.Context) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		s, err := w.c.fc.WatchDir(ctx, connect.NewRequest(&fspb.WatchDirRequest{Path: w.dir}))
		if err != nil {
			return err
		}
		defer s.Close()
		wrote := false
		for s.Receive() {
			if s.Msg().GetStart() != nil && !wrote {
				wrote = true
				if err := os.WriteFile(filepath.Join(w.dir, name), nil, 0o644); err != nil {
					return err
				}
			}
			if s.Msg().GetFilesystem().GetName() == name {
				return nil // seen: our cancel ends the stream
			}
		}
		if s.Err() == nil {
			return wrong("watch ended without an error before its event")
		}
		return s.Err()
	})
	_ = os.Remove(filepath.Join(w.dir, name))
}

func (w *worker) pollWatch() {
	var id string
	err := w.call("Filesystem.CreateWatcher", unaryDeadline, func(ctx context.Context) error {
		res, err := w.c.fc.CreateWatcher(ctx, connect.NewRequest(&fspb.CreateWatcherRequest{Path: w.dir}))
		if err == nil {
			id = res.Msg.GetWatcherId()
		}
		return err
	})
	if err != nil {
		return
	}
	_ = os.WriteFile(filepath.Join(w.dir, "polled"), []byte{byte(w.n)}, 0o644)
	for i := 0; i < 3; i++ {
		if w.call("Filesystem.GetWatcherEvents", unaryDeadline, func(ctx context.Context) error {
			_, err := w.c.fc.GetWatcherEvents(ctx, connect.NewRequest(&fspb.GetWatcherEventsRequest{WatcherId: id}))
			return err
		}) != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = w.call("Filesystem.RemoveWatcher", unaryDeadline, func(ctx context.Context) error {
		_, err := w.c.fc.RemoveWatcher(ctx, connect.NewRequest(&fspb.RemoveWatcherRequest{WatcherId: id}))
		if connect.CodeOf(err) == connect.CodeNotFound {
			return nil // envd-fs restarted meanwhile: the watcher went with it
		}
		return err
	})
}

func sh(script string) *procpb.ProcessConfig {
	return &procpb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", script}}
}

// startStream runs a Start call, handing each event to on (which may make
// other calls), to the end of the stream.
func (w *worker) startStream(req *procpb.StartRequest, on func(ev *procpb.ProcessEvent) error) error {
	return w.call("Process.Start", streamDeadline, func(ctx context.Context) error {
		s, err := w.c.pc.Start(ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		defer s.Close()
		ended := false
		for s.Receive() {
			ev := s.Msg().GetEvent()
			if ev.GetEnd() != nil {
				ended = true
			}
			if on != nil {
				if err := on(ev); err != nil {
					return err
				}
			}
		}
		if s.Err() == nil && !ended {
			return wrong("start stream closed without an end event")
		}
		return s.Err()
	})
}

func (w *worker) echo() {
	_ = w.startStream(&procpb.StartRequest{Process: sh("echo hi; echo err >&2")}, nil)
}

func (w *worker) selector(pid uint32) *procpb.ProcessSelector {
	return &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Pid{Pid: pid}}
}

func (w *worker) kill(pid uint32) {
	_ = w.call("Process.SendSignal", unaryDeadline, func(ctx context.Context) error {
		_, err := w.c.pc.SendSignal(ctx, connect.NewRequest(&procpb.SendSignalRequest{Process: w.selector(pid), Signal: procpb.Signal_SIGNAL_SIGKILL}))
		if connect.CodeOf(err) == connect.CodeNotFound {
			return nil
		}
		return err
	})
}

// stdin: cat echoes what SendInput gives it, then CloseStdin ends it.
func (w *worker) stdin() {
	var pid uint32
	closed := false
	_ = w.startStream(&procpb.StartRequest{Process: &procpb.ProcessConfig{Cmd: "/bin/cat"}, Stdin: proto.Bool(true)}, func(ev *procpb.ProcessEvent) error {
		switch {
		case ev.GetStart() != nil:
			pid = ev.GetStart().GetPid()
			if w.call("Process.SendInput", unaryDeadline, func(ctx context.Context) error {
				_, err := w.c.pc.SendInput(ctx, connect.NewRequest(&procpb.SendInputRequest{Process: w.selector(pid),
					Input: &procpb.ProcessInput{Input: &procpb.ProcessInput_Stdin{Stdin: []byte("ping\n")}}}))
				return err
			}) != nil {
				w.kill(pid)
			}
		case bytes.Contains(ev.GetData().GetStdout(), []byte("ping")) && !closed:
			closed = true
			if w.call("Process.CloseStdin", unaryDeadline, func(ctx context.Context) error {
				_, err := w.c.pc.CloseStdin(ctx, connect.NewRequest(&procpb.CloseStdinRequest{Process: w.selector(pid)}))
				return err
			}) != nil {
				w.kill(pid)
			}
		}
		return nil
	})
}

// background: a tagged sleep seen through List and Connect, then killed.
func (w *worker) background() {
	tag := fmt.Sprintf("bg-%d-%d", w.id, w.n)
	_ = w.startStream(&procpb.StartRequest{Process: sh("sleep 3"), Tag: &tag}, func(ev *procpb.ProcessEvent) error {
		if ev.GetStart() == nil {
			return nil
		}
		pid := ev.GetStart().GetPid()
		_ = w.call("Process.List", unaryDeadline, func(ctx context.Context) error {
			_, err := w.c.pc.List(ctx, connect.NewRequest(&procpb.ListRequest{}))
			return err
		})
		_ = w.call("Process.Connect", streamDeadline, func(ctx context.Context) error {
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			s, err := w.c.pc.Connect(ctx, connect.NewRequest(&procpb.ConnectRequest{Process: &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Tag{Tag: tag}}}))
			if err != nil {
				return err
			}
			defer s.Close()
			if s.Receive() {
				return nil // attached: our cancel detaches
			}
			if s.Err() == nil {
				return wrong("connect stream closed without a message")
			}
			return s.Err()
		})
		w.kill(pid)
		return nil
	})
}

func (w *worker) pty() {
	_ = w.startStream(&procpb.StartRequest{Process: &procpb.ProcessConfig{Cmd: "/bin/sh"},
		Pty: &procpb.PTY{Size: &procpb.PTY_Size{Cols: 80, Rows: 24}}}, func(ev *procpb.ProcessEvent) error {
		if ev.GetStart() == nil {
			return nil
		}
		sel := w.selector(ev.GetStart().GetPid())
		_ = w.call("Process.Update", unaryDeadline, func(ctx context.Context) error {
			_, err := w.c.pc.Update(ctx, connect.NewRequest(&procpb.UpdateRequest{Process: sel, Pty: &procpb.PTY{Size: &procpb.PTY_Size{Cols: 120, Rows: 40}}}))
			return err
		})
		if w.call("Process.SendInput", unaryDeadline, func(ctx context.Context) error {
			_, err := w.c.pc.SendInput(ctx, connect.NewRequest(&procpb.SendInputRequest{Process: sel,
				Input: &procpb.ProcessInput{Input: &procpb.ProcessInput_Pty{Pty: []byte("exit\n")}}}))
			return err
		}) != nil {
			w.kill(ev.GetStart().GetPid())
		}
		return nil
	})
}

// streamInput needs HTTP/2 (client streaming): gRPC clients only; the
// others run echo instead.
func (w *worker) streamInput() {
	if !w.c.grpc {
		w.echo()
		return
	}
	_ = w.startStream(&procpb.StartRequest{Process: &procpb.ProcessConfig{Cmd: "/bin/cat"}, Stdin: proto.Bool(true)}, func(ev *procpb.ProcessEvent) error {
		if ev.GetStart() == nil {
			return nil
		}
		sel := w.selector(ev.GetStart().GetPid())
		_ = w.call("Process.StreamInput", unaryDeadline, func(ctx context.Context) error {
			s := w.c.pc.StreamInput(ctx)
			_ = s.Send(&procpb.StreamInputRequest{Event: &procpb.StreamInputRequest_Start{Start: &procpb.StreamInputRequest_StartEvent{Process: sel}}})
			_ = s.Send(&procpb.StreamInputRequest{Event: &procpb.StreamInputRequest_Data{Data: &procpb.StreamInputRequest_DataEvent{
				Input: &procpb.ProcessInput{Input: &procpb.ProcessInput_Stdin{Stdin: []byte("streamed\n")}}}}})
			_, err := s.CloseAndReceive()
			return err
		})
		if w.call("Process.CloseStdin", unaryDeadline, func(ctx context.Context) error {
			_, err := w.c.pc.CloseStdin(ctx, connect.NewRequest(&procpb.CloseStdinRequest{Process: sel}))
			return err
		}) != nil {
			w.kill(ev.GetStart().GetPid())
		}
		return nil
	})
}

// doFiles runs one /files request and reads its whole answer.
func (w *worker) doFiles(ctx context.Context, req *http.Request) ([]byte, error) {
	res, err := w.c.files.Do(req.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return nil, err
	}
	if res.StatusCode != http.StatusOK {
		return nil, &httpStatus{code: res.StatusCode, body: string(body)}
	}
	return body, nil
}

// upload writes a new file (octet-stream or multipart), then reads it back.
func (w *worker) upload() {
	content := make([]byte, w.rng.IntN(256<<10))
	for i := range content {
		content[i] = byte(w.rng.IntN(256))
	}
	path := filepath.Join(w.upDir, fmt.Sprintf("f%d.bin", w.n))
	w.uploads.sent(path, sha(content))
	q := url.Values{"path": {path}}
	err := w.call("/files POST"+handoffSuffix, filesDeadline, func(ctx context.Context) error {
		var req *http.Request
		if w.rng.IntN(2) == 0 {
			req, _ = http.NewRequest(http.MethodPost, w.base+"/files?"+q.Encode(), bytes.NewReader(content))
			req.Header.Set("Content-Type", "application/octet-stream")
		} else {
			var body bytes.Buffer
			mw := multipart.NewWriter(&body)
			part, _ := mw.CreateFormFile("file", "upload")
			_, _ = part.Write(content)
			_ = mw.Close()
			req, _ = http.NewRequest(http.MethodPost, w.base+"/files?"+q.Encode(), &body)
			req.Header.Set("Content-Type", mw.FormDataContentType())
		}
		b, err := w.doFiles(ctx, req)
		if err == nil && !strings.Contains(string(b), filepath.Base(path)) {
			return wrong("upload answer does not name the file: %.200s", b)
		}
		return err
	})
	if err != nil {
		return
	}
	w.uploads.ack(path)
	_ = w.call("/files GET"+handoffSuffix, filesDeadline, func(ctx context.Context) error {
		req, _ := http.NewRequest(http.MethodGet, w.base+"/files?"+q.Encode(), nil)
		b, err := w.doFiles(ctx, req)
		if err == nil && sha(b) != sha(content) {
			return wrong("downloaded %d bytes differ from the %d uploaded", len(b), len(content))
		}
		return err
	})
}

func (w *worker) download() {
	_ = w.call("/files GET"+handoffSuffix, filesDeadline, func(ctx context.Context) error {
		req, _ := http.NewRequest(http.MethodGet, w.base+"/files?path="+url.QueryEscape(w.fixed), nil)
		b, err := w.doFiles(ctx, req)
		if err == nil && sha(b) != w.fixedSum {
			return wrong("download of %d bytes differs", len(b))
		}
		return err
	})
}
