// Package watch is a recursive directory watcher on raw inotify; it runs in
// envd-fs.
//
// It is used instead of fsnotify because fsnotify on Linux watches one
// directory per Add (no recursion, so new subdirectories would have to be
// chased by the caller with its own path bookkeeping racing fsnotify's), and
// merges the flags of an event into one Op. Owning the inotify fd lets this
// package keep a wd → relative-path map that follows renames inside the tree,
// add watches for new subdirectories inside the reader goroutine (so there is
// no race between the map and the events), report an IN_Q_OVERFLOW as a
// terminal error, and emit the ops of one kernel event in the order WIRE §6.8
// asks for.
//
// Watchers made by one Pool share inotify instances (PerInstance watchers
// each): an instance is a scarce, VM-wide resource (fs.inotify.
// max_user_instances, 128 by default, shared by every process of the
// user), and a watcher per instance let 128 CreateWatcher calls take them
// all. One reader goroutine per instance reads the kernel queue without
// ever waiting for a consumer and hands each watcher its events through a
// queue of its own, bounded in events: a watcher whose consumer falls that
// far behind ends with ErrOverflow alone, as it did when its own kernel
// queue overflowed; the others go on.
package watch

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Op is one kind of change. A kernel event may carry several; they are
// delivered as separate Events in the order of the constants below.
type Op uint8

const (
	Create Op = iota + 1
	Rename
	Chmod
	Write
	Remove
)

func (o Op) String() string {
	switch o {
	case Create:
		return "CREATE"
	case Rename:
		return "RENAME"
	case Chmod:
		return "CHMOD"
	case Write:
		return "WRITE"
	case Remove:
		return "REMOVE"
	}
	return fmt.Sprintf("Op(%d)", uint8(o))
}

// Event is one change. Name is relative to the watched root ("." for the root
// itself). Dir is set when the kernel said the subject is a directory.
type Event struct {
	Name string
	Op   Op
	Dir  bool
}

var (
	// ErrOverflow ends a watcher whose kernel queue overflowed: events were lost.
	ErrOverflow = errors.New("inotify event queue overflowed, events were lost")
	// ErrClosed is Err after Close.
	ErrClosed = errors.New("watcher closed")
)

const (
	baseMask = unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_MODIFY | unix.IN_DELETE |
		unix.IN_DELETE_SELF | unix.IN_MOVED_FROM | unix.IN_MOVE_SELF | unix.IN_ATTRIB |
		unix.IN_ONLYDIR | unix.IN_EXCL_UNLINK
	// Subdirectories are reached by walking; never follow a symlink there.
	subMask = baseMask | unix.IN_DONT_FOLLOW

	// readBufSize bounds one batch: about 2,000 events of short names.
	readBufSize = 64 << 10
	// batchQueue is how many batches may wait for a slow consumer before the
	// reader stops reading; the kernel queue then fills and overflows into
	// ErrOverflow instead of growing memory here.
	batchQueue = 4
)

// QueueLimit bounds the events waiting for one watcher's consumer: the
// kernel's default per-instance queue (fs.inotify.max_queued_events).
var QueueLimit = 16384

// instance is one inotify fd and its reader goroutine, shared by watchers.
type instance struct {
	fd     int
	file   *os.File
	exited chan struct{}
	pool   *Pool // that tracks it, or nil

	// mu guards the fields below and every member watcher's wds, pending,
	// queue and closed fields; the reader holds it while it dispatches.
	mu       sync.Mutex
	subs     map[int32][]*Watcher // wd → watchers using it
	watchers map[*Watcher]struct{}
	dead     bool
	freezing bool // Freeze: the reader stops at its next read
}

// newInstance starts an instance, tracked by p when p is not nil.
func newInstance(p *Pool) (*instance, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		if errors.Is(err, unix.EMFILE) {
			return nil, fmt.Errorf("inotify instance limit reached (fs.inotify.max_user_instances = %s): %w",
				readSysctl("max_user_instances"), err)
		}
		return nil, fmt.Errorf("inotify_init1: %w", err)
	}
	in := &instance{
		fd: fd,
		// A non-blocking fd registered with the runtime poller: Read parks the
		// goroutine, and Close wakes it, so nothing is left blocked in a syscall.
		file:     os.NewFile(uintptr(fd), "inotify"),
		exited:   make(chan struct{}),
		subs:     map[int32][]*Watcher{},
		watchers: map[*Watcher]struct{}{},
	}
	if p != nil {
		p.track(in)
	}
	go in.run()
	return in, nil
}

// Pool makes watchers that share inotify instances.
type Pool struct {
	// PerInstance is how many watchers share one instance (0: 64).
	PerInstance int

	mu     sync.Mutex
	cur    *instance
	frozen bool

	allMu sync.Mutex
	all   map[*instance]struct{} // every live instance (for Freeze)
}

func (p *Pool) track(in *instance) {
	in.pool = p
	p.allMu.Lock()
	if p.all == nil {
		p.all = map[*instance]struct{}{}
	}
	p.all[in] = struct{}{}
	p.allMu.Unlock()
}

func (p *Pool) untrack(in *instance) {
	p.allMu.Lock()
	delete(p.all, in)
	p.allMu.Unlock()
}

// New starts a watcher (see the package function New) on a shared instance.
func (p *Pool) New(root string, recursive bool) (*Watcher, error) {
	per := p.PerInstance
	if per <= 0 {
		per = 64
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen {
		return nil, ErrFrozen
	}
	if in := p.cur; in != nil {
		in.mu.Lock()
		usable := !in.dead && len(in.watchers) < per
		in.mu.Unlock()
		if usable {
			return in.watch(root, recursive)
		}
	}
	in, err := newInstance(p)
	if err != nil {
		return nil, err
	}
	p.cur = in
	return in.watch(root, recursive)
}

// Watcher watches one directory, or a whole tree when recursive.
type Watcher struct {
	in        *instance
	root      string
	recursive bool

	// Guarded by in.mu.
	wds      map[int32]string // wd → directory relative to root ("" = root)
	rootWd   int32
	pending  map[uint32]string // MOVED_FROM cookie → relative dir, within one read
	queue    []Event
	closed   bool
	detached bool // gone to another process (Detach); its kernel watches stay

	wake   chan struct{} // a new queue is waiting (capacity 1)
	drain  chan struct{} // closed by Detach: deliver what is queued, then end
	events chan []Event
	done   chan struct{}
	exited chan struct{} // the forwarder has closed events

	mu  sync.Mutex
	err error
}

// New starts watching root on an inotify instance of its own. With
// recursive, every directory below root is watched too (symlinks below root
// are not followed), and directories that appear later are added as their
// events arrive.
func New(root string, recursive bool) (*Watcher, error) {
	in, err := newInstance(nil)
	if err != nil {
		return nil, err
	}
	return in.watch(root, recursive)
}

func (in *instance) watch(root string, recursive bool) (*Watcher, error) {
	// A root that is a symlink to a directory is watched as that
	// directory: the walk that adds the tree below it does not follow a
	// symlink, even at its start. Event names are relative to root, so
	// clients see no difference.
	if real, err := filepath.EvalSymlinks(root); err == nil {
		root = real
	}
	w := newWatcher(in, root, recursive)
	in.mu.Lock()
	if in.dead {
		in.mu.Unlock()
		return nil, errors.New("inotify instance stopped")
	}
	in.watchers[w] = struct{}{}
	go w.forward()
	err := func() error {
		wd, err := in.add(w, root, "", baseMask)
		if err != nil {
			return addErr(root, err)
		}
		w.rootWd = wd
		if recursive {
			if _, err := w.addTree("", false); err != nil {
				return err
			}
		}
		return nil
	}()
	var last bool
	if err != nil {
		last = w.finish(err)
	}
	in.mu.Unlock()
	if err != nil {
		<-w.exited
		if last {
			<-in.exited
		}
		return nil, err
	}
	return w, nil
}

func newWatcher(in *instance, root string, recursive bool) *Watcher {
	return &Watcher{
		in:        in,
		root:      root,
		recursive: recursive,
		wds:       map[int32]string{},
		pending:   map[uint32]string{},
		wake:      make(chan struct{}, 1),
		drain:     make(chan struct{}),
		events:    make(chan []Event),
		done:      make(chan struct{}),
		exited:    make(chan struct{}),
	}
}

// add watches path for w under the name rel. Called with in.mu held.
func (in *instance) add(w *Watcher, path, rel string, mask uint32) (int32, error) {
	wd32, err := unix.InotifyAddWatch(in.fd, path, mask)
	if err != nil {
		return 0, err
	}
	wd := int32(wd32)
	if _, ok := w.wds[wd]; !ok && !slices.Contains(in.subs[wd], w) {
		in.subs[wd] = append(in.subs[wd], w)
	}
	w.wds[wd] = rel
	return wd, nil
}

// unsub takes w off wd, removing the kernel watch when nobody else uses it.
// Called with in.mu held.
func (in *instance) unsub(w *Watcher, wd int32) {
	subs := in.subs[wd]
	i := slices.Index(subs, w)
	if i < 0 {
		return
	}
	subs = slices.Delete(subs, i, i+1)
	if len(subs) == 0 {
		delete(in.subs, wd)
		unix.InotifyRmWatch(in.fd, uint32(wd))
		return
	}
	in.subs[wd] = subs
}

// finish ends w with err (called with in.mu held) and reports whether w
// was the instance's last watcher, whose fd is then closed.
func (w *Watcher) finish(err error) bool {
	if w.closed {
		return false
	}
	w.closed = true
	w.setErr(err)
	in := w.in
	for wd := range w.wds {
		in.unsub(w, wd)
	}
	w.queue = nil
	close(w.done)
	delete(in.watchers, w)
	if len(in.watchers) == 0 && !in.dead {
		in.dead = true
		in.file.Close()
		return true
	}
	return false
}

// forward hands w's queued events to its consumer, one batch per receive.
func (w *Watcher) forward() {
	defer close(w.exited)
	defer close(w.events)
	draining := false
	for {
		if !draining {
			select {
			case <-w.wake:
			case <-w.drain:
				draining = true
			case <-w.done:
				return
			}
		}
		w.in.mu.Lock()
		batch := w.queue
		w.queue = nil
		w.in.mu.Unlock()
		if len(batch) == 0 {
			if draining {
				return
			}
			continue
		}
		select {
		case w.events <- batch:
		case <-w.done:
			return
		}
	}
}

// Events delivers batches of events. It is closed when the watcher stops;
// Err then tells why.
func (w *Watcher) Events() <-chan []Event { return w.events }

// Err is the reason the watcher stopped (ErrClosed after Close), or nil while
// it runs.
func (w *Watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Close stops the watcher and releases its watches; it returns once Events
// is closed and, if it was the last watcher of its inotify instance, the
// instance's fd is released.
func (w *Watcher) Close() error {
	w.in.mu.Lock()
	last := w.finish(ErrClosed)
	w.in.mu.Unlock()
	<-w.exited
	if last {
		<-w.in.exited
	}
	return nil
}

// watchCount reports how many directories are watched. Call it only after
// Close.
func (w *Watcher) watchCount() int { return len(w.wds) }

func (w *Watcher) setErr(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
}

func readSysctl(name string) string {
	b, err := os.ReadFile("/proc/sys/fs/inotify/" + name)
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

func addErr(dir string, err error) error {
	if errors.Is(err, unix.ENOSPC) {
		return fmt.Errorf("inotify watch limit reached while watching %s (fs.inotify.max_user_watches = %s; raise it with sysctl): %w",
			dir, readSysctl("max_user_watches"), err)
	}
	return fmt.Errorf("inotify_add_watch %s: %w", dir, &fs.PathError{Op: "inotify_add_watch", Path: dir, Err: err})
}

// addTree watches rel and every directory below it. With report, it returns
// a Create event for everything found under rel: those entries were made
// before the new directory's watch existed, so no event would tell of them.
func (w *Watcher) addTree(rel string, report bool) ([]Event, error) {
	var found []Event
	start := filepath.Join(w.root, rel)
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
				return nil // vanished while we walked
			}
			if p == start && rel == "" {
				return err // the watched root itself cannot be listed
			}
			return nil // one unlistable directory: keep the rest of the tree
		}
		r := rel
		if p != start {
			r, _ = filepath.Rel(w.root, p)
			if report {
				found = append(found, Event{Name: r, Op: Create, Dir: d.IsDir()})
			}
		}
		if !d.IsDir() {
			return nil
		}
		if p == w.root {
			return nil // the root watch exists already
		}
		_, err = w.in.add(w, p, r, subMask)
		if err != nil {
			if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.ENOMEM) {
				return addErr(p, err) // out of watches: events would be lost silently
			}
			// Vanished, or one directory that cannot be watched (EACCES on
			// /proc/1/fdinfo even for root): skip it, keep the rest.
			return filepath.SkipDir
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return found, nil
}

// dropTree forgets and unwatches rel and everything below it (a directory
// that was moved out of the tree keeps its inotify watches otherwise, and
// would report events under a stale name).
func (w *Watcher) dropTree(rel string) {
	prefix := rel + "/"
	for wd, r := range w.wds {
		if wd != w.rootWd && (r == rel || strings.HasPrefix(r, prefix)) {
			w.in.unsub(w, wd)
			delete(w.wds, wd)
		}
	}
}

// run reads the kernel queue and dispatches each event to the watchers of
// its wd, never waiting for a consumer.
func (in *instance) run() {
	defer close(in.exited)
	if in.pool != nil {
		defer in.pool.untrack(in)
	}
	buf := make([]byte, readBufSize)
	for {
		n, err := in.file.Read(buf)
		in.mu.Lock()
		if err != nil {
			if in.freezing && errors.Is(err, os.ErrDeadlineExceeded) {
				// Frozen for a hand-over: what is unread stays in the kernel
				// queue for the next process.
				in.mu.Unlock()
				return
			}
			if !in.dead {
				in.fail(fmt.Errorf("read inotify: %w", err))
			}
			in.mu.Unlock()
			return
		}
		if err := in.dispatch(buf[:n]); err != nil {
			in.fail(err)
		}
		dead := in.dead
		in.mu.Unlock()
		if dead {
			// The last watcher left (its Close closed the fd) or all failed:
			// read once more to see the closed fd, then exit.
			continue
		}
	}
}

// fail ends every watcher of the instance. Called with in.mu held.
func (in *instance) fail(err error) {
	for w := range in.watchers {
		w.finish(err)
	}
	if !in.dead {
		in.dead = true
		in.file.Close()
	}
}

func (in *instance) dispatch(buf []byte) error {
	for off := 0; off+unix.SizeofInotifyEvent <= len(buf); {
		raw := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
		end := off + unix.SizeofInotifyEvent + int(raw.Len)
		if end > len(buf) {
			return errors.New("short inotify read")
		}
		name := string(trimNul(buf[off+unix.SizeofInotifyEvent : end]))
		off = end
		if raw.Mask&unix.IN_Q_OVERFLOW != 0 {
			return ErrOverflow
		}
		if raw.Mask&unix.IN_IGNORED != 0 {
			for _, w := range in.subs[raw.Wd] {
				delete(w.wds, raw.Wd)
			}
			delete(in.subs, raw.Wd)
			continue
		}
		// handle may add and drop watches (and so change subs).
		for _, w := range slices.Clone(in.subs[raw.Wd]) {
			if w.closed {
				continue
			}
			if err := w.handle(raw.Wd, raw.Mask, raw.Cookie, name); err != nil {
				w.flush()
				w.finish(err)
			}
		}
	}
	for w := range in.watchers {
		// A MOVED_FROM without its MOVED_TO in the same read left the tree.
		for cookie, rel := range w.pending {
			w.dropTree(rel)
			delete(w.pending, cookie)
		}
		if len(w.queue) > QueueLimit {
			w.finish(ErrOverflow)
			continue
		}
		w.flush()
	}
	return nil
}

// flush wakes w's forwarder if events wait. Called with in.mu held.
func (w *Watcher) flush() {
	if len(w.queue) == 0 {
		return
	}
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// handle turns one kernel event into w's events. Called with in.mu held.
func (w *Watcher) handle(wd int32, mask, cookie uint32, name string) error {
	out := w.queue
	defer func() { w.queue = out }()
	dir, known := w.wds[wd]
	if !known {
		return nil // a watch dropped a moment ago
	}
	isDir := mask&unix.IN_ISDIR != 0
	var rel string
	if name == "" {
		// The watched directory itself. For a subdirectory the parent's
		// watch reports the same change under the child's name already.
		if wd != w.rootWd {
			return nil
		}
		rel, isDir = ".", true
	} else if dir == "" {
		rel = name
	} else {
		rel = dir + "/" + name
	}
	if w.isTmpfile(name, rel) {
		return nil
	}

	// Ordered as WIRE §6.8 asks: CREATE, RENAME, CHMOD, WRITE, REMOVE.
	if mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0 {
		out = append(out, Event{Name: rel, Op: Create, Dir: isDir})
	}
	if mask&(unix.IN_MOVED_FROM|unix.IN_MOVE_SELF) != 0 {
		out = append(out, Event{Name: rel, Op: Rename, Dir: isDir})
	}
	if mask&unix.IN_ATTRIB != 0 {
		out = append(out, Event{Name: rel, Op: Chmod, Dir: isDir})
	}
	if mask&unix.IN_MODIFY != 0 {
		out = append(out, Event{Name: rel, Op: Write, Dir: isDir})
	}
	if mask&(unix.IN_DELETE|unix.IN_DELETE_SELF) != 0 {
		out = append(out, Event{Name: rel, Op: Remove, Dir: isDir})
	}

	if !w.recursive || !isDir || name == "" {
		return nil
	}
	switch {
	case mask&unix.IN_MOVED_FROM != 0:
		w.pending[cookie] = rel
	case mask&unix.IN_MOVED_TO != 0:
		if old, ok := w.pending[cookie]; ok {
			// Moved within the tree: the inodes keep their watches, and
			// re-adding returns the same wds, so only the names change.
			delete(w.pending, cookie)
			w.dropNames(old)
			if _, err := w.addTree(rel, false); err != nil {
				return err
			}
		} else if _, err := w.addTree(rel, false); err != nil {
			return err
		}
	case mask&unix.IN_CREATE != 0:
		found, err := w.addTree(rel, true)
		out = append(out, found...)
		if err != nil {
			return err
		}
	}
	return nil
}

// dropNames forgets the names under rel without removing the kernel watches
// (they are about to be re-learnt under their new names).
func (w *Watcher) dropNames(rel string) {
	prefix := rel + "/"
	for wd, r := range w.wds {
		if wd != w.rootWd && (r == rel || strings.HasPrefix(r, prefix)) {
			delete(w.wds, wd)
		}
	}
}

// isTmpfile recognises events about an O_TMPFILE inode (an upload being
// staged): the kernel reports them under the pseudo-name "#<inode>", which
// is not, and never was, an entry of the directory. A real file of such a
// name still exists when its event is read, so it is kept; only one created
// and deleted again before its events are read would be dropped with them.
func (w *Watcher) isTmpfile(name, rel string) bool {
	if len(name) < 2 || name[0] != '#' {
		return false
	}
	for i := 1; i < len(name); i++ {
		if name[i] < '0' || name[i] > '9' {
			return false
		}
	}
	var st unix.Stat_t
	return unix.Lstat(filepath.Join(w.root, rel), &st) == unix.ENOENT
}

func trimNul(b []byte) []byte {
	for i, c := range b {
		if c == 0 {
			return b[:i]
		}
	}
	return b
}

// Hand-over across a hot-swap of envd-fs. The inotify instances of the
// watchers that go over are not closed: their fds travel to the next
// envd-fs (package carry), which reads on from the kernel queue where this
// process stopped. Freeze stops every reader of the pool at a read
// boundary (everything read has been dispatched, nothing more is read),
// Detach takes one watcher off its instance without removing its kernel
// watches, and Carry hands out the instances' fds with each watcher's
// state; Adopt rebuilds the watchers in the next process. Nothing is lost
// or seen twice: events that happen meanwhile wait in the kernel queue.

// ErrDetached is Err of a watcher that went to another process (Detach).
var ErrDetached = errors.New("watcher handed over")

// ErrFrozen is New's answer once the pool is frozen.
var ErrFrozen = errors.New("inotify instances are being handed over")

// WatcherState is what a detached watcher needs to go on in another
// process, given its instance's fd.
type WatcherState struct {
	Instance  int              `json:"instance"` // index into Carry's files
	Root      string           `json:"root"`
	Recursive bool             `json:"recursive,omitempty"`
	RootWd    int32            `json:"root_wd"`
	Wds       map[int32]string `json:"wds"`
}

// Freeze stops reading every instance of the pool; the watchers keep
// what was read and get nothing more. New fails from now on.
func (p *Pool) Freeze() {
	p.mu.Lock()
	p.frozen = true
	p.mu.Unlock()
	p.allMu.Lock()
	all := make([]*instance, 0, len(p.all))
	for in := range p.all {
		all = append(all, in)
	}
	p.allMu.Unlock()
	for _, in := range all {
		in.mu.Lock()
		in.freezing = true
		dead := in.dead
		in.mu.Unlock()
		if dead {
			continue
		}
		// A deadline in the past makes the next Read fail at once and wakes
		// one parked in the poller; a read in progress is dispatched first.
		_ = in.file.SetReadDeadline(time.Unix(1, 0))
		<-in.exited
	}
}

// Detach takes w off its (frozen) instance for another process: its kernel
// watches stay, the events already queued for it are delivered on Events,
// which is then closed with Err ErrDetached. It returns false when w had
// ended already.
func (w *Watcher) Detach() (WatcherState, bool) {
	in := w.in
	in.mu.Lock()
	if w.closed {
		in.mu.Unlock()
		return WatcherState{}, false
	}
	w.closed, w.detached = true, true
	w.setErr(ErrDetached)
	delete(in.watchers, w)
	st := WatcherState{Root: w.root, Recursive: w.recursive, RootWd: w.rootWd, Wds: maps.Clone(w.wds)}
	close(w.drain)
	in.mu.Unlock()
	<-w.exited
	return st, true
}

// Carry returns a duplicate of the fd of each instance of the detached
// watchers, and sets each state's Instance to its index. Kernel watches of
// those instances that none of the detached watchers uses are removed
// first, so the next process holds only what it knows. This process no
// longer closes the instances' kernel watches; its own fds go when their
// last watcher here leaves.
func Carry(ws []*Watcher, states []WatcherState) ([]*os.File, error) {
	index := map[*instance]int{}
	var files []*os.File
	fail := func(err error) ([]*os.File, error) {
		for _, f := range files {
			f.Close()
		}
		return nil, err
	}
	for i, w := range ws {
		in := w.in
		n, ok := index[in]
		if !ok {
			fd, err := unix.FcntlInt(uintptr(in.fd), unix.F_DUPFD_CLOEXEC, 3)
			if err != nil {
				return fail(fmt.Errorf("dup inotify fd: %w", err))
			}
			n = len(files)
			index[in] = n
			files = append(files, os.NewFile(uintptr(fd), "inotify"))
		}
		states[i].Instance = n
	}
	for in := range index {
		in.mu.Lock()
		used := map[int32]bool{}
		for i, w := range ws {
			if w.in == in {
				for wd := range states[i].Wds {
					used[wd] = true
				}
			}
		}
		for wd, subs := range in.subs {
			if used[wd] {
				continue
			}
			live := false
			for _, s := range subs {
				live = live || !s.detached
			}
			if !live {
				unix.InotifyRmWatch(in.fd, uint32(wd))
				delete(in.subs, wd)
			}
		}
		if len(in.watchers) == 0 && !in.dead {
			in.dead = true
			in.file.Close()
		}
		in.mu.Unlock()
	}
	return files, nil
}

// Adopt rebuilds watchers handed over by another process (Carry's files
// and states, in order) and starts reading their instances where the
// other process stopped. Files no watcher uses are closed.
func (p *Pool) Adopt(files []*os.File, states []WatcherState) ([]*Watcher, error) {
	ins := make([]*instance, len(files))
	for i, f := range files {
		// Our own fd, so that f can go; Fd made the file blocking, and the
		// runtime poller needs it non-blocking again.
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 3)
		f.Close()
		if err == nil {
			err = unix.SetNonblock(fd, true)
		}
		if err != nil {
			for _, in := range ins[:i] {
				in.file.Close()
			}
			for _, f := range files[i+1:] {
				f.Close()
			}
			return nil, fmt.Errorf("adopt inotify fd: %w", err)
		}
		ins[i] = &instance{
			fd:       fd,
			file:     os.NewFile(uintptr(fd), "inotify"),
			exited:   make(chan struct{}),
			subs:     map[int32][]*Watcher{},
			watchers: map[*Watcher]struct{}{},
		}
	}
	ws := make([]*Watcher, len(states))
	for i, st := range states {
		if st.Instance < 0 || st.Instance >= len(ins) {
			for _, in := range ins {
				in.file.Close()
			}
			return nil, fmt.Errorf("watcher %d names instance %d of %d", i, st.Instance, len(ins))
		}
		in := ins[st.Instance]
		w := newWatcher(in, st.Root, st.Recursive)
		w.rootWd = st.RootWd
		for wd, rel := range st.Wds {
			w.wds[wd] = rel
			in.subs[wd] = append(in.subs[wd], w)
		}
		in.watchers[w] = struct{}{}
		ws[i] = w
	}
	for _, in := range ins {
		if len(in.watchers) == 0 {
			in.file.Close()
			continue
		}
		p.track(in)
		for w := range in.watchers {
			go w.forward()
		}
		go in.run()
	}
	return ws, nil
}
