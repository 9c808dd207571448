package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/gen/filesystem/filesystemconnect"
	"github.com/envd-project/envd/test/envdtest"
)

// Issue 9 item 3 for envd-fs: a hot-swap (the plugin's file replaced, as
// make swap-envd-fs does) hands the polling watchers to the new envd-fs:
// the same id answers GetWatcherEvents on the new process with every event,
// those buffered before the swap, those made while the plugins changed
// places and those after, each exactly once; a second swap hands over the
// inotify instance the first replacement adopted. A WatchDir stream open
// across the swap ends with aborted and a message that says to watch again.
func TestHotSwapEnvdFSWatchers(t *testing.T) {
	dir := bundleCopy(t)
	e := envdtest.StartFrom(t, dir)
	ctx := envdtest.Ctx(t, 2*time.Minute)
	cl := filesystemconnect.NewFilesystemClient(http.DefaultClient, e.URL)
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	cw, err := cl.CreateWatcher(ctx, connect.NewRequest(&fspb.CreateWatcherRequest{Path: root, Recursive: true}))
	if err != nil {
		t.Fatal(err)
	}
	id := cw.Msg.GetWatcherId()
	// A second, non-recursive one on the same inotify instance and directory.
	cw2, err := cl.CreateWatcher(ctx, connect.NewRequest(&fspb.CreateWatcherRequest{Path: filepath.Join(root, "sub")}))
	if err != nil {
		t.Fatal(err)
	}
	id2 := cw2.Msg.GetWatcherId()

	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	stream, err := cl.WatchDir(sctx, connect.NewRequest(&fspb.WatchDirRequest{Path: root}))
	if err != nil {
		t.Fatal(err)
	}
	if !stream.Receive() || stream.Msg().GetStart() == nil {
		t.Fatalf("WatchDir: no start event: %v", stream.Err())
	}
	streamEnd := make(chan error, 1)
	var streamEndAt time.Time
	go func() {
		for stream.Receive() {
		}
		streamEndAt = time.Now()
		streamEnd <- stream.Err()
	}()

	var made []string // names relative to root, in creation order
	create := func(name string) {
		if err := os.WriteFile(filepath.Join(root, name), []byte("x"), 0o644); err != nil {
			t.Error(err)
		}
		made = append(made, name)
	}
	seen := map[string]int{} // CREATE events per name, of the recursive watcher
	seen2 := map[string]int{}
	poll := func(id string, into map[string]int) error {
		res, err := cl.GetWatcherEvents(ctx, connect.NewRequest(&fspb.GetWatcherEventsRequest{WatcherId: id}))
		if err != nil {
			return err
		}
		for _, ev := range res.Msg.GetEvents() {
			if ev.GetType() == fspb.EventType_EVENT_TYPE_CREATE {
				into[ev.GetName()]++
			}
		}
		return nil
	}

	// Fetched before the swap, then buffered (never fetched) when it comes.
	for i := range 20 {
		create(fmt.Sprintf("a%02d", i))
	}
	if err := poll(id, seen); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		create(fmt.Sprintf("sub/b%02d", i))
	}
	time.Sleep(200 * time.Millisecond) // read by the old envd-fs into its buffers

	// Files keep coming while the plugins change places; the poll loop
	// goes on too, and no call may fail.
	old := e.PluginPid("envd-fs")
	stopWrites := make(chan struct{})
	writesDone := make(chan struct{})
	go func() {
		defer close(writesDone)
		for i := 0; ; i++ {
			select {
			case <-stopWrites:
				return
			default:
			}
			create(fmt.Sprintf("c%04d", i))
			time.Sleep(2 * time.Millisecond)
		}
	}()
	replaceFile(t, dir, "envd-fs")
	t0 := time.Now() // the file change (the rename)
	var firstNew time.Duration
	for firstNew == 0 {
		if err := poll(id, seen); err != nil {
			t.Fatalf("GetWatcherEvents during the swap: %v", err)
		}
		// Answered after the new one is up: answered by it (calls wait
		// for the replacement from the moment the old one hands over).
		if otherPlugin(e, "envd-fs", old) {
			firstNew = time.Since(t0)
		}
		if time.Since(t0) > 30*time.Second {
			t.Fatalf("envd-fs was not replaced\n%s", e.Log())
		}
	}
	time.Sleep(100 * time.Millisecond)
	close(stopWrites)
	<-writesDone
	for i := range 20 {
		create(fmt.Sprintf("sub/d%02d", i))
	}

	// Every name reported exactly once, none missing.
	check := func(what string) int {
		t.Helper()
		want := map[string]bool{}
		want2 := map[string]bool{}
		for _, n := range made {
			want[n] = true
			if rest, ok := strings.CutPrefix(n, "sub/"); ok {
				want2[rest] = true
			}
		}
		for {
			if err := poll(id, seen); err != nil {
				t.Fatalf("GetWatcherEvents after %s: %v", what, err)
			}
			if err := poll(id2, seen2); err != nil {
				t.Fatalf("GetWatcherEvents (second watcher) after %s: %v", what, err)
			}
			if complete(seen, want) && complete(seen2, want2) {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("events lost across %s: recursive watcher misses %d of %d, the other %d of %d",
					what, missing(seen, want), len(want), missing(seen2, want2), len(want2))
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(100 * time.Millisecond)
		if err := poll(id, seen); err != nil {
			t.Fatal(err)
		}
		dups := 0
		for n, c := range seen {
			if !want[n] && n != "sub" {
				t.Errorf("CREATE of %q, which the test never made", n)
			}
			if c > 1 {
				dups++
			}
		}
		for _, c := range seen2 {
			if c > 1 {
				dups++
			}
		}
		if dups > 0 {
			t.Errorf("%d names reported more than once across %s", dups, what)
		}
		return dups
	}
	dups := check("the swap")
	t.Logf("swap: %d files made (%d while swapping), events lost 0, duplicated %d; first GetWatcherEvents on the new envd-fs %v after the file change",
		len(made), countPrefix(made, "c"), dups, firstNew)
	for _, what := range []string{"polling watchers handed over", "polling watchers taken over", "since_file_change"} {
		i := strings.Index(e.Log(), what)
		if i < 0 {
			t.Fatalf("no %q in the log\n%s", what, e.Log())
		}
		t.Logf("log: %s", firstLine(e.Log()[i:]))
	}

	select {
	case err := <-streamEnd:
		if connect.CodeOf(err) != connect.CodeAborted || !strings.Contains(err.Error(), "start watching again") {
			t.Fatalf("WatchDir across the swap ended with %v, want aborted saying to watch again", err)
		}
		t.Logf("WatchDir ended %v after the file change: %v", streamEndAt.Sub(t0), err)
	case <-time.After(10 * time.Second):
		t.Fatal("WatchDir stream still open after the swap")
	}
	// A second swap hands over the inotify instance the first one adopted.
	first := 0
	for _, pid := range envdtest.Children(e.Pid()) {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.TrimSpace(string(comm)) == "envd-fs" && pid != old {
			first = pid
		}
	}
	for i := range 10 {
		create(fmt.Sprintf("sub/e%02d", i))
	}
	time.Sleep(100 * time.Millisecond)
	replaceFile(t, dir, "envd-fs")
	for strings.Count(e.Log(), "polling watchers taken over") < 2 {
		if ctx.Err() != nil {
			t.Fatalf("envd-fs was not swapped a second time\n%s", e.Log())
		}
		time.Sleep(5 * time.Millisecond)
	}
	for i := range 10 {
		create(fmt.Sprintf("sub/f%02d", i))
	}
	check("the second swap")
	for syscall.Kill(first, 0) == nil {
		if ctx.Err() != nil {
			t.Fatal("the envd-fs replaced second did not exit")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// The ids stay the new process's to remove.
	for _, w := range []string{id, id2} {
		if _, err := cl.RemoveWatcher(ctx, connect.NewRequest(&fspb.RemoveWatcherRequest{WatcherId: w})); err != nil {
			t.Fatalf("RemoveWatcher %s after the swap: %v", w, err)
		}
	}
	_, err = cl.GetWatcherEvents(ctx, connect.NewRequest(&fspb.GetWatcherEventsRequest{WatcherId: id}))
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("GetWatcherEvents after RemoveWatcher: %v, want not_found", err)
	}
	for syscall.Kill(old, 0) == nil {
		if ctx.Err() != nil {
			t.Fatal("the replaced envd-fs did not exit")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// otherPlugin reports whether a plugin called name other than old runs.
func otherPlugin(e *envdtest.Envd, name string, old int) bool {
	for _, pid := range envdtest.Children(e.Pid()) {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.TrimSpace(string(comm)) == name && pid != old {
			return true
		}
	}
	return false
}

func complete(seen map[string]int, want map[string]bool) bool { return missing(seen, want) == 0 }

func missing(seen map[string]int, want map[string]bool) int {
	n := 0
	for w := range want {
		if seen[w] == 0 {
			n++
		}
	}
	return n
}

func countPrefix(names []string, p string) int {
	n := 0
	for _, s := range names {
		if strings.HasPrefix(s, p) {
			n++
		}
	}
	return n
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
