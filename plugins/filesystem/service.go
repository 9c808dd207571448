// Package filesystem is envd-fs's logic and runs in envd-fs: the
// filesystem.Filesystem service (WIRE §6) as a service.Filesystem, directory
// watchers, and the /files HTTP endpoints (WIRE §7.6–7.8) as an http.Handler.
// Transports are adapters around these.
//
// Every operation runs as this process (root in a sandbox); the caller's user
// chooses the home directory for path resolution and the ownership of what
// is created (WIRE §4.2). Beyond the references, writes for a user other
// than root never follow a symlink into a place that user could not write
// (placer.go: 403 / permission_denied), nothing this service did not create
// is chowned, uploads overwrite in place (upload.go), /files refuses FIFOs,
// sockets and devices with 400 before anything could block on them, names
// that are not UTF-8 travel escaped (rawnames.go), and watchers share
// inotify instances with bounds per caller (watchers.go, package watch).
package filesystem

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/zap"

	"github.com/envd-project/envd/internal/paths"
	"github.com/envd-project/envd/internal/users"
	"github.com/envd-project/envd/plugins/filesystem/watch"
	"github.com/envd-project/envd/plugins/pluginkit/callinfo"
	"github.com/envd-project/envd/plugins/pluginkit/defaults"
	"github.com/envd-project/envd/plugins/pluginkit/service"
)

// DefaultWatcherEventLimit bounds the events a polling watcher (CreateWatcher)
// holds between two GetWatcherEvents calls. Past it the watcher stops and
// enters a terminal error state (WIRE §6.8 lets errors be terminal); the
// references buffer without bound instead (WIRE §12.27).
const DefaultWatcherEventLimit = 16384

// Bounds on polling watchers (CreateWatcher), which outlive their call: a
// caller (the user it names) may hold MaxPollersPerUser, the service
// MaxPollers; past them CreateWatcher answers resource_exhausted. A watcher
// nobody has polled for PollerIdleExpiry is taken as abandoned and removed
// (its id then answers not_found, as after RemoveWatcher).
const (
	MaxPollersPerUser = 64
	MaxPollers        = 256
	PollerIdleExpiry  = 30 * time.Minute
)

// Service implements service.Filesystem.
type Service struct {
	log  *zap.Logger
	defs *defaults.Store
	db   *users.DB

	// watcherEventLimit is DefaultWatcherEventLimit; tests lower it.
	watcherEventLimit int
	// The bounds above; tests lower them.
	maxPollersPerUser, maxPollers int
	pollerIdle                    time.Duration

	// pool shares inotify instances among all watchers of the service.
	pool watch.Pool

	mu       sync.Mutex
	pollers  map[string]*poller
	streams  map[*streamWatch]struct{}
	shutdown bool
	// replacing: Carry is handing the watchers to the next envd-fs; calls
	// on watchers are refused (ErrReplaced) and sent there by envd-init.
	replacing bool
}

var _ service.Filesystem = (*Service)(nil)

// New returns the filesystem service. db is normally users.Default.
func New(log *zap.Logger, defs *defaults.Store, db *users.DB) *Service {
	return &Service{
		log:               log,
		defs:              defs,
		db:                db,
		watcherEventLimit: DefaultWatcherEventLimit,
		maxPollersPerUser: MaxPollersPerUser,
		maxPollers:        MaxPollers,
		pollerIdle:        PollerIdleExpiry,
		pollers:           map[string]*poller{},
		streams:           map[*streamWatch]struct{}{},
	}
}

// takeWatchersLocked empties the poller table and lists the open WatchDir
// streams; s.mu is held.
func (s *Service) takeWatchersLocked() (map[string]*poller, []*streamWatch) {
	pollers := s.pollers
	s.pollers = map[string]*poller{}
	streams := make([]*streamWatch, 0, len(s.streams))
	for sw := range s.streams {
		streams = append(streams, sw)
	}
	return pollers, streams
}

// Shutdown stops every watcher (polling ones and the streams' ones, whose
// WatchDir calls then end with unavailable) and waits for their goroutines.
func (s *Service) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutdown = true
	pollers, streams := s.takeWatchersLocked()
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, p := range pollers {
			p.close()
		}
		for _, sw := range streams {
			sw.w.Close()
		}
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("filesystem shutdown: %w", ctx.Err())
	}
}

// SnapshotPrepare runs before the VM is paused for a snapshot. Watchers need
// nothing: inotify state lives in the kernel and is saved with the VM. It
// returns freed heap to the OS so the snapshot carries less memory.
func (s *Service) SnapshotPrepare(ctx context.Context) error {
	debug.FreeOSMemory()
	return nil
}

// SnapshotRestored runs after a restore. Nothing in this service depends on
// wall-clock continuity or on connections that a restore breaks; open
// watchers keep working, and keepalive timers simply fire late once.
func (s *Service) SnapshotRestored(ctx context.Context) error {
	return nil
}

// user returns the caller's user (Basic auth, else the default user).
func (s *Service) user(ctx context.Context) (*users.User, error) {
	name := s.defs.User(callinfo.From(ctx).User)
	if name == "" {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("no user specified"))
	}
	u, err := s.db.Lookup(name)
	if err != nil {
		if errors.Is(err, users.ErrUnknownUser) {
			return nil, connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("invalid username: '%s'", name))
		}
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("error looking up user '%s': %w", name, err))
	}
	return u, nil
}

// resolve applies WIRE §6.1 for u.
func (s *Service) resolve(p string, u *users.User) (string, error) {
	r, err := paths.Resolve(fsPath(p), u.Home, s.defs.Get().GetDefaultWorkdir())
	if err != nil {
		return "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("invalid path '%s': %w", p, err))
	}
	return r, nil
}

// userPath resolves the caller and one path.
func (s *Service) userPath(ctx context.Context, p string) (*users.User, string, error) {
	u, err := s.user(ctx)
	if err != nil {
		return nil, "", err
	}
	r, err := s.resolve(p, u)
	if err != nil {
		return nil, "", err
	}
	return u, r, nil
}
