package filesystem

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/plugins/filesystem/watch"
	"github.com/envd-project/envd/plugins/pluginkit/callinfo"
	"github.com/envd-project/envd/plugins/pluginkit/service"
)

// Filesystem magic numbers (linux/magic.h) of mounts that inotify cannot
// watch faithfully: changes made by other hosts never raise events.
const (
	nfsMagic   = 0x6969
	cifsMagic  = 0xFF534D42
	smbMagic   = 0x517B
	smb2Magic  = 0xFE534D42
	fuseMagic  = 0x65735546
	idAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
)

func isNetworkFS(magic int64) bool {
	switch uint32(magic) {
	case nfsMagic, cifsMagic, smbMagic, smb2Magic, fuseMagic:
		return true
	}
	return false
}

// statfsType is unix.Statfs's f_type; a variable so tests can pretend a path
// is on NFS without mounting one.
var statfsType = func(path string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, err
	}
	return st.Type, nil
}

type watchReq interface {
	GetPath() string
	GetRecursive() bool
	GetIncludeEntry() bool
	GetAllowNetworkMounts() bool
}

// startWatch validates the request (WIRE §6.8 common validation) and starts
// an inotify watcher on the resolved directory.
func (s *Service) startWatch(ctx context.Context, req watchReq) (*watch.Watcher, string, error) {
	_, p, err := s.userPath(ctx, req.GetPath())
	if err != nil {
		return nil, "", err
	}
	fi, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
			return nil, "", connect.NewError(connect.CodeNotFound, fmt.Errorf("path %s not found: %w", p, err))
		}
		return nil, "", connect.NewError(connect.CodeInternal, fmt.Errorf("error statting path %s: %w", p, err))
	}
	if !fi.IsDir() {
		return nil, "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("path %s not a directory", p))
	}
	if !req.GetAllowNetworkMounts() {
		magic, err := statfsType(p)
		if err != nil {
			return nil, "", connect.NewError(connect.CodeInternal, fmt.Errorf("error checking mount status: %w", err))
		}
		if isNetworkFS(magic) {
			return nil, "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("cannot watch path on network filesystem: %s", p))
		}
	}
	s.mu.Lock()
	down, replacing := s.shutdown, s.replacing
	s.mu.Unlock()
	if down {
		return nil, "", connect.NewError(connect.CodeUnavailable, errors.New("filesystem service is shutting down"))
	}
	if replacing {
		return nil, "", errReplaced()
	}
	w, err := s.pool.New(p, req.GetRecursive())
	if errors.Is(err, watch.ErrFrozen) {
		return nil, "", errReplaced()
	}
	if err != nil {
		return nil, "", connect.NewError(connect.CodeInternal, fmt.Errorf("error creating watcher for %s: %w", p, err))
	}
	return w, p, nil
}

var opType = [...]fspb.EventType{
	watch.Create: fspb.EventType_EVENT_TYPE_CREATE,
	watch.Rename: fspb.EventType_EVENT_TYPE_RENAME,
	watch.Chmod:  fspb.EventType_EVENT_TYPE_CHMOD,
	watch.Write:  fspb.EventType_EVENT_TYPE_WRITE,
	watch.Remove: fspb.EventType_EVENT_TYPE_REMOVE,
}

// toEvents converts a batch; with includeEntry, CREATE/WRITE/CHMOD carry
// the entry when it can still be stat-ed.
func toEvents(nm *names, root string, includeEntry bool, batch []watch.Event) []*fspb.FilesystemEvent {
	out := make([]*fspb.FilesystemEvent, 0, len(batch))
	for _, ev := range batch {
		fe := &fspb.FilesystemEvent{Name: wireName(ev.Name), Type: opType[ev.Op]}
		if includeEntry && (ev.Op == watch.Create || ev.Op == watch.Write || ev.Op == watch.Chmod) {
			if e, err := nm.entryInfo(filepath.Join(root, ev.Name)); err == nil {
				fe.Entry = e
			}
		}
		out = append(out, fe)
	}
	return out
}

func watcherError(err error) error {
	if errors.Is(err, watch.ErrClosed) {
		return connect.NewError(connect.CodeUnavailable, errors.New("watcher stopped: filesystem service is shutting down"))
	}
	return connect.NewError(connect.CodeInternal, fmt.Errorf("watcher error: %w", err))
}

type streamWatch struct {
	w *watch.Watcher
	// replaced: the watcher was stopped because this envd-fs is replaced.
	replaced atomic.Bool
}

// WatchDir is WIRE §6.8's stream: start, then events and keepalives until
// the caller goes away or the watcher fails. The watcher's bounded queue
// means a slow caller makes the kernel queue overflow, which ends the stream
// with an error rather than growing memory or dropping events silently.
func (s *Service) WatchDir(ctx context.Context, req *fspb.WatchDirRequest, send service.Send[fspb.WatchDirResponse]) error {
	w, root, err := s.startWatch(ctx, req)
	if err != nil {
		return err
	}
	defer w.Close()
	sw := &streamWatch{w: w}
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		return connect.NewError(connect.CodeUnavailable, errors.New("filesystem service is shutting down"))
	}
	if s.replacing {
		s.mu.Unlock()
		return errReplaced() // nothing sent yet: envd-init sends it to the replacement
	}
	s.streams[sw] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.streams, sw)
		s.mu.Unlock()
	}()

	if err := send(&fspb.WatchDirResponse{Event: &fspb.WatchDirResponse_Start{Start: &fspb.WatchDirResponse_StartEvent{}}}); err != nil {
		return sendError("start event", err)
	}
	interval := callinfo.From(ctx).Keepalive
	timer := time.NewTimer(interval)
	defer timer.Stop()
	nm := newNames(s.db)
	for {
		select {
		case <-ctx.Done():
			return ctxError(ctx)
		case <-timer.C:
			if err := send(&fspb.WatchDirResponse{Event: &fspb.WatchDirResponse_Keepalive{Keepalive: &fspb.WatchDirResponse_KeepAlive{}}}); err != nil {
				return sendError("keepalive", err)
			}
			timer.Reset(interval)
		case batch, ok := <-w.Events():
			if !ok {
				if ctx.Err() != nil {
					return ctxError(ctx)
				}
				if sw.replaced.Load() {
					return connect.NewError(connect.CodeAborted, errors.New(WatchReplaced))
				}
				return watcherError(w.Err())
			}
			for _, ev := range toEvents(nm, root, req.GetIncludeEntry(), batch) {
				if err := send(&fspb.WatchDirResponse{Event: &fspb.WatchDirResponse_Filesystem{Filesystem: ev}}); err != nil {
					return sendError("filesystem event", err)
				}
			}
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
			timer.Reset(interval)
		}
	}
}

// sendError keeps a transport's *connect.Error as it is (the caller is gone
// or the stream broke) and gives anything else a code.
func sendError(what string, err error) error {
	if ce := new(connect.Error); errors.As(err, &ce) {
		return ce
	}
	return connect.NewError(connect.CodeUnknown, fmt.Errorf("error sending %s: %w", what, err))
}

func ctxError(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
	}
	return connect.NewError(connect.CodeCanceled, ctx.Err())
}

// poller is a CreateWatcher watcher: a goroutine drains the inotify watcher
// into a bounded buffer that GetWatcherEvents empties.
type poller struct {
	w            *watch.Watcher // nil for one that ended before a hand-over
	user         string
	root         string
	includeEntry bool
	exited       chan struct{}

	mu       sync.Mutex
	events   []*fspb.FilesystemEvent
	err      error
	lastPoll time.Time
	gone     bool // handed over: its events belong to the next envd-fs
}

func (p *poller) run(nm *names, root string, includeEntry bool, limit int, log *zap.Logger) {
	defer close(p.exited)
	for batch := range p.w.Events() {
		evs := toEvents(nm, root, includeEntry, batch)
		p.mu.Lock()
		if len(p.events)+len(evs) > limit {
			p.err = fmt.Errorf("more than %d events were buffered without a GetWatcherEvents call; events were lost", limit)
			p.events = nil
			p.mu.Unlock()
			log.Warn("polling watcher overflowed its buffer", zap.String("path", root), zap.Int("limit", limit))
			// The error is terminal: stop watching now so an abandoned
			// watcher holds no inotify instance.
			p.w.Close()
			return
		}
		p.events = append(p.events, evs...)
		p.mu.Unlock()
	}
	if err := p.w.Err(); err != nil && !errors.Is(err, watch.ErrClosed) && !errors.Is(err, watch.ErrDetached) {
		p.mu.Lock()
		p.err = fmt.Errorf("watcher error: %w", err)
		p.events = nil
		p.mu.Unlock()
	}
}

func (p *poller) close() {
	if p.w != nil {
		p.w.Close()
	}
	<-p.exited
}

// CreateWatcher is WIRE §6.8's polling watcher, bounded per caller and in
// all (the references let every call take an inotify instance for good).
func (s *Service) CreateWatcher(ctx context.Context, req *fspb.CreateWatcherRequest) (*fspb.CreateWatcherResponse, error) {
	user := s.defs.User(callinfo.From(ctx).User)
	s.expirePollers()
	if err := s.pollerRoom(user); err != nil {
		return nil, err
	}
	w, root, err := s.startWatch(ctx, req)
	if err != nil {
		return nil, err
	}
	id, err := watcherID()
	if err != nil {
		w.Close()
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	p := &poller{w: w, user: user, root: root, includeEntry: req.GetIncludeEntry(), exited: make(chan struct{}), lastPoll: time.Now()}
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		w.Close()
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("filesystem service is shutting down"))
	}
	if s.replacing {
		s.mu.Unlock()
		w.Close()
		return nil, errReplaced()
	}
	if err := s.pollerRoomLocked(user); err != nil {
		s.mu.Unlock()
		w.Close()
		return nil, err
	}
	s.pollers[id] = p
	limit := s.watcherEventLimit
	s.mu.Unlock()
	go p.run(newNames(s.db), root, req.GetIncludeEntry(), limit, s.log)
	return &fspb.CreateWatcherResponse{WatcherId: id}, nil
}

func (s *Service) pollerRoom(user string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pollerRoomLocked(user)
}

func (s *Service) pollerRoomLocked(user string) error {
	if len(s.pollers) >= s.maxPollers {
		return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(
			"too many polling watchers (limit %d): remove unused ones with RemoveWatcher", s.maxPollers))
	}
	n := 0
	for _, p := range s.pollers {
		if p.user == user {
			n++
		}
	}
	if n >= s.maxPollersPerUser {
		return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(
			"too many polling watchers for user '%s' (limit %d): remove unused ones with RemoveWatcher", user, s.maxPollersPerUser))
	}
	return nil
}

// expirePollers removes the polling watchers nobody has polled for
// s.pollerIdle: a client that forgot RemoveWatcher (or died) no longer
// holds inotify watches and memory for the life of the sandbox.
func (s *Service) expirePollers() {
	now := time.Now()
	var stale []*poller
	s.mu.Lock()
	for id, p := range s.pollers {
		p.mu.Lock()
		idle := now.Sub(p.lastPoll)
		p.mu.Unlock()
		if idle > s.pollerIdle {
			delete(s.pollers, id)
			stale = append(stale, p)
			s.log.Info("polling watcher expired", zap.String("id", id), zap.Duration("idle", idle))
		}
	}
	s.mu.Unlock()
	for _, p := range stale {
		p.close()
	}
}

// GetWatcherEvents returns and clears the buffered events, or the
// watcher's terminal error.
func (s *Service) GetWatcherEvents(ctx context.Context, req *fspb.GetWatcherEventsRequest) (*fspb.GetWatcherEventsResponse, error) {
	s.mu.Lock()
	p, ok := s.pollers[req.GetWatcherId()]
	replacing := s.replacing
	s.mu.Unlock()
	if replacing {
		return nil, errReplaced()
	}
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("watcher with id %s not found", req.GetWatcherId()))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gone {
		return nil, errReplaced()
	}
	p.lastPoll = time.Now()
	if p.err != nil {
		return nil, connect.NewError(connect.CodeInternal, p.err)
	}
	evs := p.events
	p.events = nil
	return &fspb.GetWatcherEventsResponse{Events: evs}, nil
}

// RemoveWatcher stops and forgets a polling watcher.
func (s *Service) RemoveWatcher(ctx context.Context, req *fspb.RemoveWatcherRequest) (*fspb.RemoveWatcherResponse, error) {
	s.mu.Lock()
	if s.replacing {
		s.mu.Unlock()
		return nil, errReplaced()
	}
	p, ok := s.pollers[req.GetWatcherId()]
	delete(s.pollers, req.GetWatcherId())
	s.mu.Unlock()
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("watcher with id %s not found", req.GetWatcherId()))
	}
	p.close()
	return &fspb.RemoveWatcherResponse{}, nil
}

// watcherID is "w" and 20 characters of [a-z0-9].
func watcherID() (string, error) {
	b := make([]byte, 21)
	b[0] = 'w'
	r := make([]byte, 40)
	if _, err := rand.Read(r); err != nil {
		return "", fmt.Errorf("generating watcher id: %w", err)
	}
	n := 1
	for _, c := range r {
		// 252 = 7×36: rejecting above it keeps the characters uniform.
		if c < 252 && n < len(b) {
			b[n] = idAlphabet[int(c)%len(idAlphabet)]
			n++
		}
	}
	for n < len(b) {
		var one [1]byte
		if _, err := rand.Read(one[:]); err != nil {
			return "", fmt.Errorf("generating watcher id: %w", err)
		}
		if one[0] < 252 {
			b[n] = idAlphabet[int(one[0])%len(idAlphabet)]
			n++
		}
	}
	return string(b), nil
}
