package watch

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func fdCount(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// collect reads events until pred is satisfied or the timeout passes.
func collect(t *testing.T, w *Watcher, timeout time.Duration, pred func([]Event) bool) []Event {
	t.Helper()
	var got []Event
	deadline := time.After(timeout)
	for !pred(got) {
		select {
		case b, ok := <-w.Events():
			if !ok {
				t.Fatalf("watcher stopped: %v (got %v)", w.Err(), got)
			}
			got = append(got, b...)
		case <-deadline:
			t.Fatalf("timeout; got %v", got)
		}
	}
	return got
}

func has(evs []Event, name string, op Op) bool {
	return slices.Contains(evs, Event{Name: name, Op: op}) || slices.Contains(evs, Event{Name: name, Op: op, Dir: true})
}

func TestFlat(t *testing.T) {
	dir := t.TempDir()
	w, err := New(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	p := filepath.Join(dir, "a.txt")
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, 0o600)
	os.Rename(p, filepath.Join(dir, "b.txt"))
	os.Remove(filepath.Join(dir, "b.txt"))
	got := collect(t, w, 5*time.Second, func(e []Event) bool { return has(e, "b.txt", Remove) })
	for _, want := range []Event{{"a.txt", Create, false}, {"a.txt", Write, false}, {"a.txt", Chmod, false}, {"a.txt", Rename, false}, {"b.txt", Create, false}} {
		if !has(got, want.Name, want.Op) {
			t.Errorf("missing %v in %v", want, got)
		}
	}
	// Non-recursive: a subdirectory's contents are not reported.
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "sub", "x"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "marker"), nil, 0o644)
	got = collect(t, w, 5*time.Second, func(e []Event) bool { return has(e, "marker", Create) })
	if has(got, "sub/x", Create) {
		t.Errorf("non-recursive watcher reported sub/x: %v", got)
	}
}

func TestRecursiveNewSubdirs(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "old", "deep"), 0o755)
	w, err := New(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	os.WriteFile(filepath.Join(dir, "old", "deep", "f"), []byte("1"), 0o644)
	got := collect(t, w, 5*time.Second, func(e []Event) bool { return has(e, "old/deep/f", Write) })
	_ = got
	// A new tree made quickly: its inner parts may exist before the watch.
	if err := os.MkdirAll(filepath.Join(dir, "n1", "n2", "n3"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "n1", "n2", "n3", "file.txt"), []byte("hi"), 0o644)
	got = collect(t, w, 5*time.Second, func(e []Event) bool {
		return has(e, "n1", Create) && has(e, "n1/n2", Create) && has(e, "n1/n2/n3", Create) && has(e, "n1/n2/n3/file.txt", Create)
	})
	// Now the new directories are watched for sure.
	os.WriteFile(filepath.Join(dir, "n1", "n2", "later"), []byte("x"), 0o644)
	collect(t, w, 5*time.Second, func(e []Event) bool { return has(e, "n1/n2/later", Write) })

	// Rename inside the tree: events follow the new name.
	if err := os.Rename(filepath.Join(dir, "n1"), filepath.Join(dir, "m1")); err != nil {
		t.Fatal(err)
	}
	collect(t, w, 5*time.Second, func(e []Event) bool { return has(e, "n1", Rename) && has(e, "m1", Create) })
	os.WriteFile(filepath.Join(dir, "m1", "n2", "after"), []byte("x"), 0o644)
	got = collect(t, w, 5*time.Second, func(e []Event) bool { return has(e, "m1/n2/after", Write) })
	for _, e := range got {
		if strings.HasPrefix(e.Name, "n1/") {
			t.Errorf("stale name after rename: %v", e)
		}
	}
	// Moved out of the tree: no more events from it, and its watches are gone.
	out := t.TempDir()
	if err := os.Rename(filepath.Join(dir, "m1"), filepath.Join(out, "m1")); err != nil {
		t.Fatal(err)
	}
	collect(t, w, 5*time.Second, func(e []Event) bool { return has(e, "m1", Rename) })
	os.WriteFile(filepath.Join(out, "m1", "n2", "outside"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(dir, "marker"), nil, 0o644)
	got = collect(t, w, 5*time.Second, func(e []Event) bool { return has(e, "marker", Create) })
	for _, e := range got {
		if strings.Contains(e.Name, "outside") {
			t.Errorf("event from a directory moved out of the tree: %v", e)
		}
	}
}

func TestFlagOrder(t *testing.T) {
	// A single kernel event with several flags is split in WIRE §6.8 order.
	w := &Watcher{wds: map[int32]string{1: ""}, rootWd: 1, pending: map[uint32]string{}}
	mask := uint32(unix.IN_DELETE | unix.IN_MODIFY | unix.IN_ATTRIB | unix.IN_MOVED_FROM | unix.IN_CREATE)
	if err := w.handle(1, mask, 0, "f"); err != nil {
		t.Fatal(err)
	}
	got := w.queue
	var ops []Op
	for _, e := range got {
		ops = append(ops, e.Op)
	}
	if want := []Op{Create, Rename, Chmod, Write, Remove}; !slices.Equal(ops, want) {
		t.Fatalf("order %v, want %v", ops, want)
	}
}

func TestOverflowEndsWatcher(t *testing.T) {
	dir := t.TempDir()
	w, err := New(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	os.WriteFile(a, nil, 0o644)
	os.WriteFile(b, nil, 0o644)
	// Nobody reads Events: the batch queue fills, then the kernel queue.
	// Alternating files defeats the kernel's merging of identical events.
	limit := 16384
	if s, err := os.ReadFile("/proc/sys/fs/inotify/max_queued_events"); err == nil {
		fmt.Sscan(string(s), &limit)
	}
	if limit > 200000 {
		t.Skipf("max_queued_events = %d is too large to overflow quickly", limit)
	}
	for i := 0; i < limit*2+20000; i++ {
		p := a
		if i%2 == 1 {
			p = b
		}
		os.Chmod(p, os.FileMode(0o600|i%2*0o044))
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-w.Events():
			if !ok {
				if !errors.Is(w.Err(), ErrOverflow) {
					t.Fatalf("err = %v, want overflow", w.Err())
				}
				return
			}
		case <-deadline:
			t.Fatal("no overflow reported")
		}
	}
}

func TestCloseReleases(t *testing.T) {
	dir := t.TempDir()
	for i := range 20 {
		os.MkdirAll(filepath.Join(dir, fmt.Sprint(i), "x"), 0o755)
	}
	before := fdCount(t)
	for range 50 {
		w, err := New(dir, true)
		if err != nil {
			t.Fatal(err)
		}
		w.Close()
		w.Close() // idempotent
		if w.watchCount() != 41 {
			t.Fatalf("watching %d dirs, want 41", w.watchCount())
		}
		if !errors.Is(w.Err(), ErrClosed) {
			t.Fatalf("Err after Close = %v", w.Err())
		}
		if _, ok := <-w.Events(); ok {
			t.Fatal("events channel open after Close")
		}
	}
	if after := fdCount(t); after != before {
		t.Fatalf("fds: %d before, %d after", before, after)
	}
}

func TestNotADirectory(t *testing.T) {
	f := filepath.Join(t.TempDir(), "f")
	os.WriteFile(f, nil, 0o644)
	if _, err := New(f, false); err == nil {
		t.Fatal("watching a file succeeded")
	}
	if _, err := New(filepath.Join(f, "missing"), true); err == nil {
		t.Fatal("watching a missing path succeeded")
	}
}

// TestTmpfileEvents pins down what the /files upload relies on: writes to
// an O_TMPFILE inode, which the kernel reports under "#<inode>", are not
// passed on; linking it in raises CREATE and a truncate through the final
// path WRITE, under the final name. A real file named like that is reported.
func TestTmpfileEvents(t *testing.T) {
	dir := t.TempDir()
	w, err := New(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_WRONLY, 0o644)
	if err != nil {
		t.Skipf("no O_TMPFILE here: %v", err)
	}
	f := os.NewFile(uintptr(fd), "tmp")
	defer f.Close()
	f.Write([]byte("hello"))
	final := filepath.Join(dir, "final")
	if err := unix.Linkat(fd, "", unix.AT_FDCWD, final, unix.AT_EMPTY_PATH); err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("more")) // still reported under "#<inode>", not "final"
	os.Truncate(final, 9)
	os.WriteFile(filepath.Join(dir, "#123"), []byte("x"), 0o644)
	got := collect(t, w, 5*time.Second, func(e []Event) bool { return has(e, "final", Write) && has(e, "#123", Write) })
	if !has(got, "final", Create) {
		t.Errorf("no CREATE for the linked file: %v", got)
	}
	for _, e := range got {
		if e.Name != "final" && e.Name != "#123" {
			t.Errorf("unexpected event %v", e)
		}
	}
}

func TestWatchLimitErrorIsClear(t *testing.T) {
	// Raising or lowering fs.inotify.max_user_watches would touch the whole
	// machine, so the ENOSPC path is checked on the error it builds.
	err := addErr("/some/dir", unix.ENOSPC)
	for _, want := range []string{"inotify watch limit reached", "/some/dir", "fs.inotify.max_user_watches = ", "sysctl"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
	if !errors.Is(err, unix.ENOSPC) {
		t.Error("not wrapping ENOSPC")
	}
}

// A recursive watch of a symlink to a directory covers the whole tree
// behind it, subdirectories that already exist included.
func TestRecursiveThroughASymlinkedRoot(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	if err := os.MkdirAll(filepath.Join(real, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	w, err := New(link, true)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	os.WriteFile(filepath.Join(real, "sub", "x"), []byte("1"), 0o644)
	os.WriteFile(filepath.Join(real, "marker"), nil, 0o644)
	collect(t, w, 5*time.Second, func(e []Event) bool { return has(e, "marker", Create) && has(e, "sub/x", Create) })
}

// Issue 12: one directory that cannot be watched (inotify_add_watch gives
// EACCES for /proc/1/fdinfo, even to root) is skipped; it used to end the
// whole recursive watch.
func TestUnwatchableSubdirIsSkipped(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: bind mounts need root")
	}
	dir := t.TempDir()
	proc := filepath.Join(dir, "proc1")
	os.Mkdir(proc, 0o755)
	if out, err := exec.Command("mount", "--bind", "/proc/1", proc).CombinedOutput(); err != nil {
		t.Skipf("skipping: %v %s", err, out)
	}
	defer exec.Command("umount", "-l", proc).Run()
	w, err := New(dir, true)
	if err != nil {
		t.Fatalf("recursive watch with an unwatchable subdirectory: %v", err)
	}
	defer w.Close()
	os.Mkdir(filepath.Join(dir, "later"), 0o755)
	os.WriteFile(filepath.Join(dir, "f"), nil, 0o644)
	deadline := time.After(10 * time.Second)
	for {
		select {
		case b, ok := <-w.Events():
			if !ok {
				t.Fatalf("watcher ended: %v", w.Err())
			}
			for _, e := range b {
				if e.Name == "f" && e.Op == Create {
					return
				}
			}
		case <-deadline:
			t.Fatal("no event")
		}
	}
}

// Issue 12: watchers of one Pool share inotify instances (200 watchers take
// 4 instances, not 200); a watcher whose consumer never reads ends alone
// with ErrOverflow while the others go on; closing them all releases every
// instance.
func TestPoolSharesInstances(t *testing.T) {
	old := QueueLimit
	t.Cleanup(func() { QueueLimit = old }) // after the watchers' cleanup below
	QueueLimit = 500                       // set before any reader starts
	dir := t.TempDir()
	before := fdCount(t)
	p := &Pool{PerInstance: 64}
	var ws []*Watcher
	t.Cleanup(func() {
		for _, w := range ws {
			w.Close()
		}
	})
	for range 200 {
		w, err := p.New(dir, true)
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	if n := fdCount(t) - before; n != 4 {
		t.Fatalf("200 watchers hold %d fds, want 4 inotify instances", n)
	}
	// ws[1] is read as the events come; nobody reads the others, which
	// overflow their queues alone.
	got := make(chan []Event, 1)
	var read atomic.Int64
	go func() {
		var evs []Event
		for b := range ws[1].Events() {
			evs = append(evs, b...)
			read.Store(int64(len(evs)))
			if has(evs, "999", Create) {
				break
			}
		}
		got <- evs
	}()
	// The writer keeps at most 200 events ahead of the reading watcher (a
	// loaded CI machine must not make the reader look slow); the others,
	// never read, still get 1000 events, twice their queue.
	for i := range 1000 {
		for int(read.Load()) < i-200 && ws[1].Err() == nil {
			time.Sleep(time.Millisecond)
		}
		os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), nil, 0o644)
	}
	select {
	case evs := <-got:
		if len(evs) < 1000 {
			t.Fatalf("reading watcher got %d events (err %v)", len(evs), ws[1].Err())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the reading watcher did not see all creates: %v", ws[1].Err())
	}
	deadline := time.Now().Add(10 * time.Second)
	for ws[0].Err() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the watcher that never reads did not overflow")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !errors.Is(ws[0].Err(), ErrOverflow) || ws[1].Err() != nil {
		t.Fatalf("errs %v, %v", ws[0].Err(), ws[1].Err())
	}
	for _, w := range ws {
		w.Close()
	}
	if n := fdCount(t); n != before {
		t.Fatalf("fds: %d before, %d after closing all", before, n)
	}
}

// A hand-over (Freeze, Detach, Carry, then Adopt in the next process; here
// a second pool) loses nothing and repeats nothing: what the old pool had
// read comes out of the old watcher before its Events close, what happened
// while it was frozen and afterwards comes out of the adopted one, each
// once. A stream watcher sharing a directory with the carried one ends
// without taking the kernel watch away; a new subdirectory made during the
// freeze is watched by the adopted recursive watcher.
func TestHandOverLosesNothing(t *testing.T) {
	dir := t.TempDir()
	var a Pool
	w, err := a.New(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := a.New(dir, false) // same instance, same root wd
	if err != nil {
		t.Fatal(err)
	}
	mk := func(name string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mk("before")
	// Read by the old pool, not taken by any consumer yet.
	time.Sleep(100 * time.Millisecond)
	a.Freeze()
	if _, err := a.New(dir, false); !errors.Is(err, ErrFrozen) {
		t.Fatalf("New on a frozen pool: %v, want ErrFrozen", err)
	}
	mk("frozen")
	if err := os.Mkdir(filepath.Join(dir, "newdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	stream.Close()
	var old []Event
	done := make(chan struct{})
	go func() {
		defer close(done)
		for b := range w.Events() {
			old = append(old, b...)
		}
	}()
	st, ok := w.Detach()
	if !ok {
		t.Fatal("Detach: watcher had ended")
	}
	<-done
	if !errors.Is(w.Err(), ErrDetached) {
		t.Fatalf("old watcher's Err %v, want ErrDetached", w.Err())
	}
	states := []WatcherState{st}
	files, err := Carry([]*Watcher{w}, states)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 || states[0].Instance != 0 {
		t.Fatalf("Carry: %d files, instance %d", len(files), states[0].Instance)
	}
	mk("between")
	var b Pool
	ws, err := b.Adopt(files, states)
	if err != nil {
		t.Fatal(err)
	}
	nw := ws[0]
	defer nw.Close()
	mk("after")
	// newdir's watch is added (and newdir scanned) when its CREATE is read:
	// a file made in it while that scan runs would be reported twice, by the
	// scan and by the kernel (a race of recursive watching, not of the
	// handover), so inner is made once the new watcher has reported newdir.
	got := collect(t, nw, 5*time.Second, func(evs []Event) bool { return has(evs, "after", Create) && has(evs, "newdir", Create) })
	if err := os.WriteFile(filepath.Join(dir, "newdir", "inner"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got = append(got, collect(t, nw, 5*time.Second, func(evs []Event) bool { return has(evs, "newdir/inner", Create) })...)
	time.Sleep(100 * time.Millisecond)
	w.Close() // no-op after Detach; must not touch the carried watches
	mk("last")
	got = append(got, collect(t, nw, 5*time.Second, func(evs []Event) bool { return has(evs, "last", Create) })...)
	count := map[string]int{}
	for _, ev := range append(old, got...) {
		if ev.Op == Create {
			count[ev.Name]++
		}
	}
	for _, n := range []string{"before", "frozen", "newdir", "between", "after", "newdir/inner", "last"} {
		if count[n] != 1 {
			t.Errorf("CREATE %s seen %d times (old %v, new %v)", n, count[n], old, got)
		}
	}
	if !has(old, "before", Create) {
		t.Errorf("the event read before the freeze did not come out of the old watcher: %v", old)
	}
}
