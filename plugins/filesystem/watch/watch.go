// Package watch is a recursive directory watcher on raw inotify.
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
package watch

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
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

// Watcher watches one directory, or a whole tree when recursive.
type Watcher struct {
	root      string
	recursive bool
	file      *os.File
	fd        int

	// Owned by the reader goroutine after New returns.
	wds     map[int32]string // wd → directory relative to root ("" = root)
	rootWd  int32
	pending map[uint32]string // MOVED_FROM cookie → relative dir, within one batch

	events chan []Event
	done   chan struct{}
	exited chan struct{}

	closeOnce sync.Once
	mu        sync.Mutex
	err       error
}

// New starts watching root. With recursive, every directory below root is
// watched too (symlinks below root are not followed), and directories that
// appear later are added as their events arrive.
func New(root string, recursive bool) (*Watcher, error) {
	// A root that is a symlink to a directory is watched as that
	// directory: the walk that adds the tree below it does not follow a
	// symlink, even at its start. Event names are relative to root, so
	// clients see no difference.
	if real, err := filepath.EvalSymlinks(root); err == nil {
		root = real
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		if errors.Is(err, unix.EMFILE) {
			return nil, fmt.Errorf("inotify instance limit reached (fs.inotify.max_user_instances = %s): %w",
				readSysctl("max_user_instances"), err)
		}
		return nil, fmt.Errorf("inotify_init1: %w", err)
	}
	w := &Watcher{
		root:      root,
		recursive: recursive,
		fd:        fd,
		// A non-blocking fd registered with the runtime poller: Read parks the
		// goroutine, and Close wakes it, so nothing is left blocked in a syscall.
		file:    os.NewFile(uintptr(fd), "inotify"),
		wds:     map[int32]string{},
		pending: map[uint32]string{},
		events:  make(chan []Event, batchQueue),
		done:    make(chan struct{}),
		exited:  make(chan struct{}),
	}
	wd, err := unix.InotifyAddWatch(fd, root, baseMask)
	if err != nil {
		w.file.Close()
		return nil, addErr(root, err)
	}
	w.rootWd = int32(wd)
	w.wds[int32(wd)] = ""
	if recursive {
		if _, err := w.addTree("", false); err != nil {
			w.file.Close()
			return nil, err
		}
	}
	go w.run()
	return w, nil
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

// Close stops the watcher, releases the inotify fd and waits until the reader
// goroutine has exited.
func (w *Watcher) Close() error {
	w.closeOnce.Do(func() {
		w.setErr(ErrClosed)
		close(w.done)
		w.file.Close()
	})
	<-w.exited
	return nil
}

// watchCount reports how many directories are watched. The map belongs to
// the reader goroutine: call it only after Close.
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
		wd, err := unix.InotifyAddWatch(w.fd, p, subMask)
		if err != nil {
			if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.ENOMEM) {
				return addErr(p, err) // out of watches: events would be lost silently
			}
			// Vanished, or one directory that cannot be watched (EACCES on
			// /proc/1/fdinfo even for root): skip it, keep the rest.
			return filepath.SkipDir
		}
		w.wds[int32(wd)] = r
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
			unix.InotifyRmWatch(w.fd, uint32(wd))
			delete(w.wds, wd)
		}
	}
}

func (w *Watcher) stop(err error) {
	w.setErr(err)
	w.closeOnce.Do(func() {
		close(w.done)
		w.file.Close()
	})
}

func (w *Watcher) run() {
	defer close(w.exited)
	defer close(w.events)
	buf := make([]byte, readBufSize)
	for {
		n, err := w.file.Read(buf)
		if err != nil {
			select {
			case <-w.done:
			default:
				w.stop(fmt.Errorf("read inotify: %w", err))
			}
			return
		}
		batch, err := w.parse(buf[:n])
		if err != nil {
			w.stop(err)
			// Deliver what came before the failure, then close.
			if len(batch) > 0 {
				select {
				case w.events <- batch:
				default:
				}
			}
			return
		}
		if len(batch) == 0 {
			continue
		}
		select {
		case w.events <- batch:
		case <-w.done:
			return
		}
	}
}

func (w *Watcher) parse(buf []byte) ([]Event, error) {
	var out []Event
	for off := 0; off+unix.SizeofInotifyEvent <= len(buf); {
		raw := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
		nameLen := int(raw.Len)
		end := off + unix.SizeofInotifyEvent + nameLen
		if end > len(buf) {
			return out, errors.New("short inotify read")
		}
		name := string(trimNul(buf[off+unix.SizeofInotifyEvent : end]))
		off = end
		mask := raw.Mask

		if mask&unix.IN_Q_OVERFLOW != 0 {
			return out, ErrOverflow
		}
		dir, known := w.wds[raw.Wd]
		if mask&unix.IN_IGNORED != 0 {
			delete(w.wds, raw.Wd)
			continue
		}
		if !known {
			continue // a watch dropped a moment ago
		}
		isDir := mask&unix.IN_ISDIR != 0
		var rel string
		if name == "" {
			// The watched directory itself. For a subdirectory the parent's
			// watch reports the same change under the child's name already.
			if raw.Wd != w.rootWd {
				continue
			}
			rel, isDir = ".", true
		} else if dir == "" {
			rel = name
		} else {
			rel = dir + "/" + name
		}
		if w.isTmpfile(name, rel) {
			continue
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
			continue
		}
		switch {
		case mask&unix.IN_MOVED_FROM != 0:
			w.pending[raw.Cookie] = rel
		case mask&unix.IN_MOVED_TO != 0:
			if old, ok := w.pending[raw.Cookie]; ok {
				// Moved within the tree: the inodes keep their watches, and
				// re-adding returns the same wds, so only the names change.
				delete(w.pending, raw.Cookie)
				w.dropNames(old)
				if _, err := w.addTree(rel, false); err != nil {
					return out, err
				}
			} else if _, err := w.addTree(rel, false); err != nil {
				return out, err
			}
		case mask&unix.IN_CREATE != 0:
			found, err := w.addTree(rel, true)
			out = append(out, found...)
			if err != nil {
				return out, err
			}
		}
	}
	// A MOVED_FROM without its MOVED_TO in the same read left the tree.
	for cookie, rel := range w.pending {
		w.dropTree(rel)
		delete(w.pending, cookie)
	}
	return out, nil
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
