package filesystem

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/plugins/filesystem/watch"
)

// A hot-swap of envd-fs (docs/architecture.md, "Hot-swap") hands the
// polling watchers (CreateWatcher) to the next envd-fs: same ids, same
// owners, the events not yet fetched, and their inotify instances
// themselves (package carry sends the fds through envd-init). The old
// process stops reading each instance at a read boundary and the new one
// reads on from the kernel queue, so an event that happens during the swap
// is neither lost nor reported twice. The kernel's own rules still apply:
// identical consecutive events not yet read are merged (as whenever a
// reader lags), and an instance whose queue overflows (more than
// fs.inotify.max_queued_events, 16384, during the swap) ends its watchers
// with the overflow error, never silently.
//
// WatchDir streams are not carried: they end at once with WatchReplaced
// (aborted) and the client watches again.

// ErrReplaced is the message of a watcher call refused, without acting on
// it, by an envd-fs that is handing its watchers over: envd-init sends the
// call to the replacement (grpcadapter).
const ErrReplaced = "envd-fs is being replaced"

// WatchReplaced ends the WatchDir streams open at a hot-swap. Aborted: the
// E2B SDKs pass its message to the client as it is, where unavailable
// would read as a sandbox timeout, and gRPC's meaning (retry at a higher
// level) is what the client has to do: watch again.
const WatchReplaced = "watch ended: the filesystem service (envd-fs) was replaced by a new version; start watching again"

func errReplaced() error {
	return connect.NewError(connect.CodeUnavailable, errors.New(ErrReplaced))
}

// carriedVersion is the layout of carriedState; a replacement that does
// not know it drops the watchers (their ids answer not_found).
const carriedVersion = 1

// maxCarriedEvents bounds the encoded events of all pollers (the control
// call carrying them takes 64 MiB). A poller whose events do not fit goes
// over in its terminal error state instead: its client learns events were
// lost.
const maxCarriedEvents = 48 << 20

type carriedState struct {
	V       int             `json:"v"`
	Pollers []carriedPoller `json:"pollers"`
}

type carriedPoller struct {
	ID           string              `json:"id"`
	User         string              `json:"user"`
	Root         string              `json:"root"`
	IncludeEntry bool                `json:"include_entry,omitempty"`
	LastPoll     int64               `json:"last_poll"` // Unix nanoseconds
	Err          string              `json:"err,omitempty"`
	Events       [][]byte            `json:"events,omitempty"` // FilesystemEvent, protobuf
	Watch        *watch.WatcherState `json:"watch,omitempty"`  // nil: the watcher had ended
}

// Carry hands the polling watchers over (pluginmain.Carrier): watcher
// calls are refused from now on (envd-init sends them to the replacement),
// every inotify instance stops reading, WatchDir streams end with
// WatchReplaced, and each poller's buffered events and watch state are
// returned with its instance's fd.
func (s *Service) Carry(ctx context.Context) ([]byte, []*os.File, error) {
	s.mu.Lock()
	s.replacing = true
	ids := make([]string, 0, len(s.pollers))
	for id := range s.pollers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	pollers, streams := s.takeWatchersLocked()
	s.mu.Unlock()

	s.pool.Freeze()
	for _, sw := range streams {
		sw.replaced.Store(true)
		sw.w.Close()
	}
	st := carriedState{V: carriedVersion}
	var (
		ws     []*watch.Watcher
		states []watch.WatcherState
		at     []int // index into st.Pollers of each ws entry
		size   int
	)
	for _, id := range ids {
		p := pollers[id]
		var wst watch.WatcherState
		live := false
		if p.w != nil {
			wst, live = p.w.Detach()
		}
		<-p.exited // everything the watcher had is in p.events now
		p.mu.Lock()
		p.gone = true
		cp := carriedPoller{ID: id, User: p.user, Root: p.root, IncludeEntry: p.includeEntry, LastPoll: p.lastPoll.UnixNano()}
		if p.err != nil {
			cp.Err = p.err.Error()
		} else {
			for _, ev := range p.events {
				b, err := proto.Marshal(ev)
				if err != nil {
					p.mu.Unlock()
					return nil, nil, fmt.Errorf("encode event of watcher %s: %w", id, err)
				}
				cp.Events = append(cp.Events, b)
				size += len(b)
			}
			if size > maxCarriedEvents {
				size -= eventsSize(cp.Events)
				cp.Events = nil
				cp.Err = "more events were buffered than a hot-swap of envd-fs could carry; events were lost"
			}
		}
		p.events = nil
		p.mu.Unlock()
		if live {
			ws = append(ws, p.w)
			states = append(states, wst)
			at = append(at, len(st.Pollers))
		}
		st.Pollers = append(st.Pollers, cp)
	}
	files, err := watch.Carry(ws, states)
	if err != nil {
		return nil, nil, err
	}
	for i, j := range at {
		st.Pollers[j].Watch = &states[i]
	}
	b, err := json.Marshal(&st)
	if err != nil {
		for _, f := range files {
			f.Close()
		}
		return nil, nil, fmt.Errorf("encode watchers: %w", err)
	}
	s.log.Info("polling watchers handed over", zap.Int("watchers", len(st.Pollers)),
		zap.Int("inotify_instances", len(files)), zap.Int("streams_ended", len(streams)))
	return b, files, nil
}

func eventsSize(evs [][]byte) int {
	n := 0
	for _, b := range evs {
		n += len(b)
	}
	return n
}

// Resume takes the polling watchers of the envd-fs this one replaces
// (pluginmain.Carrier), before this one serves.
func (s *Service) Resume(ctx context.Context, state []byte, files []*os.File) error {
	var st carriedState
	if err := json.Unmarshal(state, &st); err != nil || st.V != carriedVersion {
		for _, f := range files {
			f.Close()
		}
		if err == nil {
			err = fmt.Errorf("version %d, want %d", st.V, carriedVersion)
		}
		return fmt.Errorf("watchers handed over: %w", err)
	}
	var states []watch.WatcherState
	for _, cp := range st.Pollers {
		if cp.Watch != nil {
			states = append(states, *cp.Watch)
		}
	}
	ws, err := s.pool.Adopt(files, states)
	if err != nil {
		return fmt.Errorf("watchers handed over: %w", err)
	}
	s.mu.Lock()
	limit := s.watcherEventLimit
	s.mu.Unlock()
	var run []*poller
	for _, cp := range st.Pollers {
		p := &poller{user: cp.User, root: cp.Root, includeEntry: cp.IncludeEntry, exited: make(chan struct{}), lastPoll: time.Unix(0, cp.LastPoll)}
		if cp.Watch != nil {
			p.w, ws = ws[0], ws[1:]
		}
		for _, b := range cp.Events {
			ev := new(fspb.FilesystemEvent)
			if err := proto.Unmarshal(b, ev); err != nil {
				cp.Err = fmt.Sprintf("an event could not be handed over in a hot-swap of envd-fs: %v", err)
				break
			}
			p.events = append(p.events, ev)
		}
		if cp.Err != "" {
			p.err, p.events = errors.New(cp.Err), nil
		}
		switch {
		case p.w == nil:
			close(p.exited)
		case p.err != nil:
			p.w.Close()
			close(p.exited)
			p.w = nil
		default:
			run = append(run, p)
		}
		s.mu.Lock()
		s.pollers[cp.ID] = p
		s.mu.Unlock()
	}
	for _, p := range run {
		go p.run(newNames(s.db), p.root, p.includeEntry, limit, s.log)
	}
	s.log.Info("polling watchers taken over", zap.Int("watchers", len(st.Pollers)), zap.Int("inotify_instances", len(files)))
	return nil
}
