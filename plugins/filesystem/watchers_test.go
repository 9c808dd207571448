package filesystem

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"testing"
	"time"

	"connectrpc.com/connect"

	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/plugins/pluginkit/callinfo"
)

type stream struct {
	msgs chan *fspb.WatchDirResponse
	done chan error
	stop context.CancelFunc
}

// startWatch runs WatchDir in the background; the first message must be start.
func startStream(t *testing.T, s *Service, ctx context.Context, req *fspb.WatchDirRequest) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	st := &stream{msgs: make(chan *fspb.WatchDirResponse, 1<<14), done: make(chan error, 1), stop: cancel}
	go func() {
		st.done <- s.WatchDir(ctx, req, func(m *fspb.WatchDirResponse) error {
			select {
			case st.msgs <- m:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	select {
	case m := <-st.msgs:
		if m.GetStart() == nil {
			t.Fatalf("first message %v, want start", m)
		}
	case err := <-st.done:
		t.Fatalf("WatchDir ended: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no start event")
	}
	t.Cleanup(func() { cancel(); <-st.done })
	return st
}

func (st *stream) waitFor(t *testing.T, name string, typ fspb.EventType) *fspb.FilesystemEvent {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m := <-st.msgs:
			if ev := m.GetFilesystem(); ev != nil && ev.Name == name && ev.Type == typ {
				return ev
			}
		case err := <-st.done:
			t.Fatalf("stream ended waiting for %s %v: %v", name, typ, err)
		case <-timeout:
			t.Fatalf("no %v event for %q", typ, name)
		}
	}
}

func TestWatchDirStream(t *testing.T) {
	s := newSvc(t, "")
	dir := t.TempDir()
	st := startStream(t, s, context.Background(), &fspb.WatchDirRequest{Path: dir, IncludeEntry: true})
	p := filepath.Join(dir, "f.txt")
	os.WriteFile(p, []byte("x"), 0o644)
	ev := st.waitFor(t, "f.txt", fspb.EventType_EVENT_TYPE_CREATE)
	if ev.Entry == nil || ev.Entry.Path != p {
		t.Fatalf("include_entry: %v", ev)
	}
	st.waitFor(t, "f.txt", fspb.EventType_EVENT_TYPE_WRITE)
	os.Chmod(p, 0o600)
	st.waitFor(t, "f.txt", fspb.EventType_EVENT_TYPE_CHMOD)
	os.Rename(p, p+".2")
	if ev := st.waitFor(t, "f.txt", fspb.EventType_EVENT_TYPE_RENAME); ev.Entry != nil {
		t.Fatal("RENAME carries an entry")
	}
	os.Remove(p + ".2")
	if ev := st.waitFor(t, "f.txt.2", fspb.EventType_EVENT_TYPE_REMOVE); ev.Entry != nil {
		t.Fatal("REMOVE carries an entry")
	}
}

func TestWatchDirRecursive(t *testing.T) {
	s := newSvc(t, "")
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "pre"), 0o755)
	st := startStream(t, s, context.Background(), &fspb.WatchDirRequest{Path: dir, Recursive: true})
	os.WriteFile(filepath.Join(dir, "pre", "a"), []byte("1"), 0o644)
	st.waitFor(t, "pre/a", fspb.EventType_EVENT_TYPE_WRITE)
	os.MkdirAll(filepath.Join(dir, "new", "deeper"), 0o755)
	st.waitFor(t, "new", fspb.EventType_EVENT_TYPE_CREATE)
	st.waitFor(t, "new/deeper", fspb.EventType_EVENT_TYPE_CREATE)
	os.WriteFile(filepath.Join(dir, "new", "deeper", "file.txt"), []byte("1"), 0o644)
	st.waitFor(t, "new/deeper/file.txt", fspb.EventType_EVENT_TYPE_WRITE)
}

func TestWatchDirKeepalive(t *testing.T) {
	s := newSvc(t, "")
	ctx := callinfo.With(context.Background(), callinfo.Info{Keepalive: 50 * time.Millisecond})
	st := startStream(t, s, ctx, &fspb.WatchDirRequest{Path: t.TempDir()})
	select {
	case m := <-st.msgs:
		if m.GetKeepalive() == nil {
			t.Fatalf("got %v, want keepalive", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no keepalive")
	}
}

func TestWatchDirValidation(t *testing.T) {
	s := newSvc(t, "")
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	os.WriteFile(f, nil, 0o644)
	nop := func(*fspb.WatchDirResponse) error { return nil }
	ctx := context.Background()
	wantCode(t, s.WatchDir(ctx, &fspb.WatchDirRequest{Path: filepath.Join(dir, "missing")}, nop), connect.CodeNotFound, "not found")
	wantCode(t, s.WatchDir(ctx, &fspb.WatchDirRequest{Path: f}, nop), connect.CodeInvalidArgument, "not a directory")
	_, err := s.CreateWatcher(ctx, &fspb.CreateWatcherRequest{Path: f})
	wantCode(t, err, connect.CodeInvalidArgument, "not a directory")
	_, err = s.CreateWatcher(ctx, &fspb.CreateWatcherRequest{Path: "~x/y"})
	wantCode(t, err, connect.CodeInvalidArgument, "")

	// Pretend the directory is on NFS.
	orig := statfsType
	statfsType = func(string) (int64, error) { return nfsMagic, nil }
	defer func() { statfsType = orig }()
	wantCode(t, s.WatchDir(ctx, &fspb.WatchDirRequest{Path: dir}, nop), connect.CodeInvalidArgument, "cannot watch path on network filesystem: "+dir)
	_, err = s.CreateWatcher(ctx, &fspb.CreateWatcherRequest{Path: dir})
	wantCode(t, err, connect.CodeInvalidArgument, "network filesystem")
	r, err := s.CreateWatcher(ctx, &fspb.CreateWatcherRequest{Path: dir, AllowNetworkMounts: true})
	if err != nil {
		t.Fatalf("opt-in refused: %v", err)
	}
	s.RemoveWatcher(ctx, &fspb.RemoveWatcherRequest{WatcherId: r.WatcherId})
	for _, m := range []int64{nfsMagic, cifsMagic, smbMagic, smb2Magic, fuseMagic, int64(int32(-0x1acb2be))} {
		if m > 0 && !isNetworkFS(m) {
			t.Errorf("%#x not network", m)
		}
	}
	if isNetworkFS(0xEF53) || isNetworkFS(0x01021994) {
		t.Error("ext4/tmpfs reported as network")
	}
}

func TestWatchDirOverflowEndsStream(t *testing.T) {
	s := newSvc(t, "")
	dir := t.TempDir()
	release := make(chan struct{})
	done := make(chan error, 1)
	started := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		first := true
		done <- s.WatchDir(ctx, &fspb.WatchDirRequest{Path: dir}, func(m *fspb.WatchDirResponse) error {
			if first {
				first = false
				close(started)
				return nil
			}
			<-release // a stalled client
			return nil
		})
	}()
	<-started
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	os.WriteFile(a, nil, 0o644)
	os.WriteFile(b, nil, 0o644)
	for i := range 80000 {
		p := a
		if i%2 == 1 {
			p = b
		}
		os.Chmod(p, os.FileMode(0o600|i%2*0o044))
	}
	close(release)
	select {
	case err := <-done:
		wantCode(t, err, connect.CodeInternal, "overflow")
	case <-time.After(20 * time.Second):
		t.Fatal("stream did not end after an overflow")
	}
}

func TestPollingWatcher(t *testing.T) {
	s := newSvc(t, "")
	ctx := context.Background()
	dir := t.TempDir()
	fds, gor := fdCount(t), runtime.NumGoroutine()

	r, err := s.CreateWatcher(ctx, &fspb.CreateWatcherRequest{Path: dir, Recursive: true, IncludeEntry: true})
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^w[a-z0-9]{20}$`).MatchString(r.WatcherId) {
		t.Fatalf("id %q", r.WatcherId)
	}
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	// Once sub's CREATE is out, sub itself is watched: only then is a
	// write inside it sure to be seen as a WRITE.
	var got []*fspb.FilesystemEvent
	subBy := time.Now().Add(10 * time.Second)
	for seen := false; !seen; {
		if time.Now().After(subBy) {
			t.Fatalf("no CREATE of sub: %v", got)
		}
		ev, err := s.GetWatcherEvents(ctx, &fspb.GetWatcherEventsRequest{WatcherId: r.WatcherId})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ev.Events...)
		for _, e := range ev.Events {
			seen = seen || (e.Name == "sub" && e.Type == fspb.EventType_EVENT_TYPE_CREATE)
		}
		if !seen {
			time.Sleep(10 * time.Millisecond)
		}
	}
	os.WriteFile(filepath.Join(dir, "sub", "x"), []byte("1"), 0o644)
	deadline := time.Now().Add(10 * time.Second)
	for {
		ev, err := s.GetWatcherEvents(ctx, &fspb.GetWatcherEventsRequest{WatcherId: r.WatcherId})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ev.Events...)
		found := false
		for _, e := range got {
			found = found || (e.Name == "sub/x" && e.Type == fspb.EventType_EVENT_TYPE_WRITE && e.Entry != nil)
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events %v", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	ev, err := s.GetWatcherEvents(ctx, &fspb.GetWatcherEventsRequest{WatcherId: r.WatcherId})
	if err != nil || len(ev.Events) != 0 {
		t.Fatalf("buffer not cleared: %v %v", ev, err)
	}
	if _, err := s.RemoveWatcher(ctx, &fspb.RemoveWatcherRequest{WatcherId: r.WatcherId}); err != nil {
		t.Fatal(err)
	}
	_, err = s.RemoveWatcher(ctx, &fspb.RemoveWatcherRequest{WatcherId: r.WatcherId})
	wantCode(t, err, connect.CodeNotFound, "")
	_, err = s.GetWatcherEvents(ctx, &fspb.GetWatcherEventsRequest{WatcherId: r.WatcherId})
	wantCode(t, err, connect.CodeNotFound, "")
	_, err = s.GetWatcherEvents(ctx, &fspb.GetWatcherEventsRequest{WatcherId: "nope"})
	wantCode(t, err, connect.CodeNotFound, "")
	if n := fdCount(t); n != fds {
		t.Fatalf("fds %d → %d", fds, n)
	}
	settle(t, gor)
}

func TestPollingWatcherBound(t *testing.T) {
	s := newSvc(t, "")
	s.watcherEventLimit = 50
	ctx := context.Background()
	dir := t.TempDir()
	fds := fdCount(t)
	r, err := s.CreateWatcher(ctx, &fspb.CreateWatcherRequest{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), nil, 0o644)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := s.GetWatcherEvents(ctx, &fspb.GetWatcherEventsRequest{WatcherId: r.WatcherId})
		if err != nil {
			wantCode(t, err, connect.CodeInternal, "more than 50 events")
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("bound never hit")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Terminal: every later call reports it, and the inotify fd is gone.
	_, err = s.GetWatcherEvents(ctx, &fspb.GetWatcherEventsRequest{WatcherId: r.WatcherId})
	wantCode(t, err, connect.CodeInternal, "more than 50 events")
	if n := fdCount(t); n != fds {
		t.Fatalf("fds %d → %d while in the error state", fds, n)
	}
	if _, err := s.RemoveWatcher(ctx, &fspb.RemoveWatcherRequest{WatcherId: r.WatcherId}); err != nil {
		t.Fatal(err)
	}
}

func TestWatchersDieAndLeakNothing(t *testing.T) {
	s := newSvc(t, "")
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "a", "b"), 0o755)
	fds, gor := fdCount(t), runtime.NumGoroutine()
	for range 20 {
		st := startStream(t, s, context.Background(), &fspb.WatchDirRequest{Path: dir, Recursive: true})
		st.stop()
		if err := <-st.done; codeOf(err) != connect.CodeCanceled {
			t.Fatalf("ended with %v", err)
		}
		st.done <- nil // for the cleanup
	}
	// Shutdown ends live streams and polling watchers.
	st := startStream(t, s, context.Background(), &fspb.WatchDirRequest{Path: dir})
	if _, err := s.CreateWatcher(context.Background(), &fspb.CreateWatcherRequest{Path: dir}); err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-st.done:
		wantCode(t, err, connect.CodeUnavailable, "")
		st.done <- nil
	case <-time.After(5 * time.Second):
		t.Fatal("stream survived Shutdown")
	}
	_, err := s.CreateWatcher(context.Background(), &fspb.CreateWatcherRequest{Path: dir})
	wantCode(t, err, connect.CodeUnavailable, "")
	if n := fdCount(t); n != fds {
		t.Fatalf("fds %d → %d", fds, n)
	}
	settle(t, gor)
}

func TestWatchTenThousandDirs(t *testing.T) {
	s := newSvc(t, "")
	dir := t.TempDir()
	for i := range 100 {
		for j := range 100 {
			if err := os.MkdirAll(filepath.Join(dir, fmt.Sprint(i), fmt.Sprint(j)), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	st := startStream(t, s, context.Background(), &fspb.WatchDirRequest{Path: dir, Recursive: true})
	os.WriteFile(filepath.Join(dir, "99", "99", "leaf"), []byte("x"), 0o644)
	st.waitFor(t, "99/99/leaf", fspb.EventType_EVENT_TYPE_WRITE)
	os.WriteFile(filepath.Join(dir, "0", "0", "leaf"), []byte("x"), 0o644)
	st.waitFor(t, "0/0/leaf", fspb.EventType_EVENT_TYPE_WRITE)
}

func TestWatchDirEndsWhenSendFails(t *testing.T) {
	s := newSvc(t, "")
	dir := t.TempDir()
	fds, gor := fdCount(t), runtime.NumGoroutine()
	gone := connect.NewError(connect.CodeCanceled, fmt.Errorf("client went away"))
	done := make(chan error, 1)
	go func() {
		n := 0
		done <- s.WatchDir(context.Background(), &fspb.WatchDirRequest{Path: dir, Recursive: true}, func(*fspb.WatchDirResponse) error {
			n++
			if n > 1 {
				return gone
			}
			return nil
		})
	}()
	deadline := time.After(10 * time.Second)
	for i := 0; ; i++ {
		os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), nil, 0o644)
		select {
		case err := <-done:
			if err != gone {
				t.Fatalf("ended with %v", err)
			}
			if n := fdCount(t); n != fds {
				t.Fatalf("fds %d → %d", fds, n)
			}
			settle(t, gor)
			return
		case <-deadline:
			t.Fatal("stream did not end")
		case <-time.After(20 * time.Millisecond):
		}
	}
}
