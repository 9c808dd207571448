package filesystem

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	fspb "github.com/envd-project/envd/gen/filesystem"
)

// TestListDirMatchesStat checks the bulk listing (fd-relative stats,
// parallel workers, shared buffers) against a plain lstat by path of every
// entry: the same §6.2 EntryInfo, with the path rebuilt as filepath.Join of
// the requested path (§6.4), with listxattrat and with its fallback.
func TestListDirMatchesStat(t *testing.T) {
	s := newSvc(t, "")
	dir := t.TempDir()
	j := func(parts ...string) string { return filepath.Join(append([]string{dir}, parts...)...) }
	if err := os.MkdirAll(j("sub", "deeper"), 0o750); err != nil {
		t.Fatal(err)
	}
	for i := range parallelMin + 77 {
		p := j(fmt.Sprintf("f%04d", i))
		if err := os.WriteFile(p, []byte(strings.Repeat("x", i%5)), 0o644); err != nil {
			t.Fatal(err)
		}
		if i%50 == 0 {
			setMeta(t, p, "k", fmt.Sprint(i))
			setMeta(t, p, "ü", "v\x01")
		}
	}
	os.WriteFile(j("sub", "in-sub"), nil, 0o600)
	os.WriteFile(j("sub", "deeper", "too-deep"), nil, 0o600)
	os.WriteFile(j("setuid"), nil, 0o4755)
	os.Chmod(j("setuid"), 0o4755)
	os.Symlink(j("f0000"), j("l-file"))
	os.Symlink("sub", j("l-dir"))
	os.Symlink("missing", j("l-dangling"))
	unix.Mkfifo(j("fifo"), 0o600)
	if ln, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0); err == nil {
		unix.Bind(ln, &unix.SockaddrUnix{Name: j("sock")})
		defer unix.Close(ln)
	}

	// Unclean spellings of the same directory, and one through a symlink.
	os.Symlink(dir, j("sub", "back"))
	requests := []string{dir, dir + "//", dir + "/./", j("sub", "..") + "/", j("sub", "back")}
	check := func(t *testing.T) {
		for _, req := range requests {
			res, err := s.ListDir(context.Background(), &fspb.ListDirRequest{Path: req, Depth: 2})
			if err != nil {
				t.Fatal(err)
			}
			real, err := filepath.EvalSymlinks(req)
			if err != nil {
				t.Fatal(err)
			}
			var want []*fspb.EntryInfo
			filepath.WalkDir(real, func(p string, d os.DirEntry, err error) error {
				if err != nil || p == real {
					return err
				}
				rel, _ := filepath.Rel(real, p)
				if strings.Count(rel, "/") >= 2 {
					return filepath.SkipDir
				}
				e, err := newNames(s.db).entryInfo(p)
				if err != nil {
					t.Fatal(err)
				}
				e.Path = filepath.Join(req, rel)
				want = append(want, e)
				return nil
			})
			if len(res.Entries) != len(want) {
				t.Fatalf("%s: %d entries, want %d", req, len(res.Entries), len(want))
			}
			meta := 0
			for i, e := range res.Entries {
				if !proto.Equal(e, want[i]) {
					t.Fatalf("%s: entry %d\ngot  %v\nwant %v", req, i, e, want[i])
				}
				meta += len(e.Metadata)
			}
			if meta == 0 && xattrsWork(dir) {
				t.Fatalf("%s: no metadata listed", req)
			}
		}
	}
	t.Run("listxattrat", check)
	t.Run("by path", func(t *testing.T) {
		was := noListxattrat.Load()
		noListxattrat.Store(true)
		defer noListxattrat.Store(was)
		check(t)
	})
}

func xattrsWork(dir string) bool {
	p := filepath.Join(dir, "xattr-probe")
	os.WriteFile(p, nil, 0o600)
	defer os.Remove(p)
	return unix.Setxattr(p, MetadataPrefix+"probe", []byte("1"), 0) == nil
}

// TestListDirVanishingEntries removes entries while listings run: they are
// skipped, nothing else fails.
func TestListDirVanishingEntries(t *testing.T) {
	s := newSvc(t, "")
	dir := t.TempDir()
	for i := range 2000 {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%04d", i)), nil, 0o644)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 2000 {
			os.Remove(filepath.Join(dir, fmt.Sprintf("f%04d", i)))
		}
	}()
	for range 20 {
		res, err := s.ListDir(context.Background(), &fspb.ListDirRequest{Path: dir})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range res.Entries {
			if e.Name == "" || e.Path != filepath.Join(dir, e.Name) {
				t.Fatalf("bad entry %v", e)
			}
		}
	}
	<-done
}

func TestJoinPrefix(t *testing.T) {
	for _, dir := range []string{"/", "//", "/a", "/a/", "/a//b/./", "a", "./a/..", "..", "../x/..", "/.."} {
		if got, want := joinPrefix(dir)+"n", filepath.Join(dir, "n"); got != want {
			t.Errorf("joinPrefix(%q)+n = %q, filepath.Join = %q", dir, got, want)
		}
	}
}
