package filesystem

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	fspb "github.com/envd-project/envd/gen/filesystem"
)

func setMeta(t *testing.T, p, k, v string) {
	t.Helper()
	if err := unix.Setxattr(p, MetadataPrefix+k, []byte(v), 0); err != nil {
		t.Skipf("no user xattrs here: %v", err)
	}
}

func TestStat(t *testing.T) {
	s := newSvc(t, "")
	ctx := context.Background()
	dir := t.TempDir()
	f := filepath.Join(dir, "file.txt")
	os.WriteFile(f, []byte("hello"), 0o640)
	mtime := time.Unix(1700000000, 123456789)
	os.Chtimes(f, mtime, mtime)
	setMeta(t, f, "k", "v")
	unix.Setxattr(f, MetadataPrefix+"bad", []byte{0xff, 0xfe}, 0) // not UTF-8: skipped
	unix.Setxattr(f, "user.other", []byte("x"), 0)                // other namespace: ignored

	r, err := s.Stat(ctx, &fspb.StatRequest{Path: f})
	if err != nil {
		t.Fatal(err)
	}
	e := r.GetEntry()
	if e.Name != "file.txt" || e.Path != f || e.Type != fspb.FileType_FILE_TYPE_FILE || e.Size != 5 ||
		e.Mode != 0o640 || e.Permissions != "-rw-r-----" || e.Owner != "root" || e.Group != "root" {
		t.Fatalf("entry %v", e)
	}
	if !e.ModifiedTime.AsTime().Equal(mtime) {
		t.Fatalf("mtime %v, want %v", e.ModifiedTime.AsTime(), mtime)
	}
	if len(e.Metadata) != 1 || e.Metadata["k"] != "v" {
		t.Fatalf("metadata %v", e.Metadata)
	}
	if e.SymlinkTarget != nil {
		t.Fatal("symlink_target on a file")
	}

	// Directory.
	r, _ = s.Stat(ctx, &fspb.StatRequest{Path: dir})
	if r.Entry.Type != fspb.FileType_FILE_TYPE_DIRECTORY || !strings.HasPrefix(r.Entry.Permissions, "d") {
		t.Fatalf("dir entry %v", r.Entry)
	}

	// Symlink to a file through a symlinked directory: target's type and
	// mode, lstat size, fully resolved target, capital L.
	os.Symlink(dir, filepath.Join(dir, "dirlink"))
	link := filepath.Join(dir, "link")
	os.Symlink("dirlink/file.txt", link)
	r, err = s.Stat(ctx, &fspb.StatRequest{Path: link})
	if err != nil {
		t.Fatal(err)
	}
	e = r.Entry
	real, _ := filepath.EvalSymlinks(f)
	if e.Type != fspb.FileType_FILE_TYPE_FILE || e.Mode != 0o640 || e.Size != int64(len("dirlink/file.txt")) ||
		!strings.HasPrefix(e.Permissions, "L") || e.GetSymlinkTarget() != real {
		t.Fatalf("symlink entry %v", e)
	}
	// Symlink to a directory.
	r, _ = s.Stat(ctx, &fspb.StatRequest{Path: filepath.Join(dir, "dirlink")})
	if r.Entry.Type != fspb.FileType_FILE_TYPE_DIRECTORY {
		t.Fatalf("dir symlink type %v", r.Entry.Type)
	}
	// Dangling symlink: unspecified, mode 0, target is its own path.
	dang := filepath.Join(dir, "dangling")
	os.Symlink("nowhere", dang)
	r, err = s.Stat(ctx, &fspb.StatRequest{Path: dang})
	if err != nil {
		t.Fatal(err)
	}
	if r.Entry.Type != fspb.FileType_FILE_TYPE_UNSPECIFIED || r.Entry.Mode != 0 || r.Entry.GetSymlinkTarget() != dang {
		t.Fatalf("dangling entry %v", r.Entry)
	}
	// A FIFO: unspecified type, Go's permission string.
	fifo := filepath.Join(dir, "fifo")
	unix.Mkfifo(fifo, 0o600)
	r, _ = s.Stat(ctx, &fspb.StatRequest{Path: fifo})
	if r.Entry.Type != fspb.FileType_FILE_TYPE_UNSPECIFIED || r.Entry.Permissions != "prw-------" {
		t.Fatalf("fifo entry %v", r.Entry)
	}
	// Setuid and devices use Go's FileMode letters.
	unix.Chmod(f, 0o4755)
	r, _ = s.Stat(ctx, &fspb.StatRequest{Path: f})
	if r.Entry.Permissions != "urwxr-xr-x" {
		t.Fatalf("setuid permissions %q", r.Entry.Permissions)
	}
	r, _ = s.Stat(ctx, &fspb.StatRequest{Path: "/dev/null"})
	if r.Entry.Permissions != "Dcrw-rw-rw-" {
		t.Fatalf("/dev/null permissions %q", r.Entry.Permissions)
	}

	// Errors.
	_, err = s.Stat(ctx, &fspb.StatRequest{Path: filepath.Join(dir, "missing")})
	wantCode(t, err, connect.CodeNotFound, "file not found")
	_, err = s.Stat(ctx, &fspb.StatRequest{Path: filepath.Join(f, "under-a-file")})
	wantCode(t, err, connect.CodeNotFound, "file not found")
	_, err = s.Stat(ctx, &fspb.StatRequest{Path: "/" + strings.Repeat("a/", 2500)})
	wantCode(t, err, connect.CodeInternal, "file name too long")
}

func TestUsersAndPaths(t *testing.T) {
	u := testUser(t)
	work := t.TempDir()
	s := newSvc(t, work)
	os.WriteFile(filepath.Join(u.Home, "in-home.txt"), []byte("x"), 0o644)
	defer os.Remove(filepath.Join(u.Home, "in-home.txt"))
	ctx := asUser("user")
	for _, p := range []string{"in-home.txt", "~/in-home.txt", "./x/../in-home.txt", filepath.Join(u.Home, "in-home.txt")} {
		r, err := s.Stat(ctx, &fspb.StatRequest{Path: p})
		if err != nil {
			t.Fatalf("%q: %v", p, err)
		}
		if r.Entry.Path != filepath.Join(u.Home, "in-home.txt") {
			t.Fatalf("%q resolved to %q", p, r.Entry.Path)
		}
	}
	r, err := s.Stat(ctx, &fspb.StatRequest{Path: "~"})
	if err != nil || r.Entry.Path != u.Home {
		t.Fatalf("~: %v %v", r, err)
	}
	// Empty path: the default workdir.
	r, err = s.Stat(ctx, &fspb.StatRequest{Path: ""})
	if err != nil || r.Entry.Path != work {
		t.Fatalf("empty path: %v %v", r, err)
	}
	// Relative paths for root resolve against /root, not the workdir.
	r, err = s.Stat(context.Background(), &fspb.StatRequest{Path: "."})
	if err != nil || r.Entry.Path != "/root" {
		t.Fatalf("root's '.': %v %v", r, err)
	}
	_, err = s.Stat(ctx, &fspb.StatRequest{Path: "~otheruser/x"})
	wantCode(t, err, connect.CodeInvalidArgument, "cannot expand user-specific home dir")
	_, err = s.Stat(asUser("no-such-user-xyz"), &fspb.StatRequest{Path: "/"})
	wantCode(t, err, connect.CodeUnauthenticated, "invalid username: 'no-such-user-xyz'")
	_, err = s.ListDir(asUser("no-such-user-xyz"), &fspb.ListDirRequest{Path: "/"})
	wantCode(t, err, connect.CodeUnauthenticated, "invalid username")
	err = s.WatchDir(asUser("no-such-user-xyz"), &fspb.WatchDirRequest{Path: "/"}, func(*fspb.WatchDirResponse) error { return nil })
	wantCode(t, err, connect.CodeUnauthenticated, "invalid username")
}

func TestMakeDir(t *testing.T) {
	u := testUser(t)
	s := newSvc(t, "")
	ctx := asUser("user")
	dir := t.TempDir()
	p := filepath.Join(dir, "a", "b", "c")
	r, err := s.MakeDir(ctx, &fspb.MakeDirRequest{Path: p})
	if err != nil {
		t.Fatal(err)
	}
	if r.Entry.Path != p || r.Entry.Type != fspb.FileType_FILE_TYPE_DIRECTORY || r.Entry.Owner != "user" || r.Entry.Permissions != "drwxr-xr-x" {
		t.Fatalf("entry %v", r.Entry)
	}
	for _, d := range []string{"a", "a/b", "a/b/c"} {
		var st unix.Stat_t
		unix.Stat(filepath.Join(dir, d), &st)
		if st.Uid != u.UID || st.Gid != u.GID {
			t.Fatalf("%s owned by %d:%d", d, st.Uid, st.Gid)
		}
	}
	var st unix.Stat_t
	unix.Stat(dir, &st)
	if st.Uid != 0 {
		t.Fatal("an existing parent was chowned")
	}
	_, err = s.MakeDir(ctx, &fspb.MakeDirRequest{Path: p})
	wantCode(t, err, connect.CodeAlreadyExists, "directory already exists")
	f := filepath.Join(dir, "file")
	os.WriteFile(f, nil, 0o644)
	_, err = s.MakeDir(ctx, &fspb.MakeDirRequest{Path: f})
	wantCode(t, err, connect.CodeInvalidArgument, "not a directory")
	_, err = s.MakeDir(ctx, &fspb.MakeDirRequest{Path: filepath.Join(f, "sub", "x")})
	wantCode(t, err, connect.CodeInternal, "path is a file")
	_, err = s.MakeDir(ctx, &fspb.MakeDirRequest{Path: "/tmp/" + strings.Repeat("b/", 2500)})
	wantCode(t, err, connect.CodeInternal, "")
	_, err = s.MakeDir(ctx, &fspb.MakeDirRequest{Path: "~root/x"})
	wantCode(t, err, connect.CodeInvalidArgument, "")
}

func TestMoveRemove(t *testing.T) {
	u := testUser(t)
	s := newSvc(t, "")
	ctx := asUser("user")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.txt")
	os.WriteFile(src, []byte("abc"), 0o644)
	dst := filepath.Join(dir, "new", "parent", "dst.txt")
	r, err := s.Move(ctx, &fspb.MoveRequest{Source: src, Destination: dst})
	if err != nil {
		t.Fatal(err)
	}
	if r.Entry.Path != dst || r.Entry.Size != 3 || r.Entry.Owner != "root" {
		t.Fatalf("entry %v", r.Entry)
	}
	var st unix.Stat_t
	unix.Stat(filepath.Join(dir, "new"), &st)
	if st.Uid != u.UID {
		t.Fatal("created parent not chowned to the user")
	}
	// Overwrites an existing destination file.
	os.WriteFile(src, []byte("12345"), 0o644)
	r, err = s.Move(ctx, &fspb.MoveRequest{Source: src, Destination: dst})
	if err != nil || r.Entry.Size != 5 {
		t.Fatalf("overwrite: %v %v", r, err)
	}
	_, err = s.Move(ctx, &fspb.MoveRequest{Source: src, Destination: dst})
	wantCode(t, err, connect.CodeNotFound, "")
	// Cross-device (to /dev/shm, a tmpfs) fails with internal.
	if _, err := os.Stat("/dev/shm"); err == nil {
		_, err = s.Move(ctx, &fspb.MoveRequest{Source: dst, Destination: "/dev/shm/envd-fs-test-xdev"})
		if err == nil {
			os.Remove("/dev/shm/envd-fs-test-xdev")
		} else {
			wantCode(t, err, connect.CodeInternal, "")
		}
	}

	// Remove: recursive, and a missing path is success.
	os.MkdirAll(filepath.Join(dir, "tree", "x", "y"), 0o755)
	os.WriteFile(filepath.Join(dir, "tree", "x", "y", "f"), nil, 0o644)
	if _, err := s.Remove(ctx, &fspb.RemoveRequest{Path: filepath.Join(dir, "tree")}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "tree")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("tree still there")
	}
	if _, err := s.Remove(ctx, &fspb.RemoveRequest{Path: filepath.Join(dir, "tree")}); err != nil {
		t.Fatalf("removing a missing path: %v", err)
	}
	_, err = s.Remove(ctx, &fspb.RemoveRequest{Path: "~nobody/x"})
	wantCode(t, err, connect.CodeInvalidArgument, "")
}

func entryPaths(es []*fspb.EntryInfo) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Path)
	}
	return out
}

func TestListDir(t *testing.T) {
	s := newSvc(t, "")
	ctx := context.Background()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "b", "c", "d"), 0o755)
	os.WriteFile(filepath.Join(dir, "a.txt"), []byte("1"), 0o644)
	os.WriteFile(filepath.Join(dir, "b", "in-b"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "b", "c", "in-c"), nil, 0o644)
	os.Symlink(filepath.Join(dir, "b"), filepath.Join(dir, "z-link"))

	list := func(p string, depth uint32) []string {
		t.Helper()
		r, err := s.ListDir(ctx, &fspb.ListDirRequest{Path: p, Depth: depth})
		if err != nil {
			t.Fatal(err)
		}
		return entryPaths(r.Entries)
	}
	j := func(parts ...string) string { return filepath.Join(append([]string{dir}, parts...)...) }
	want1 := []string{j("a.txt"), j("b"), j("z-link")}
	if got := list(dir, 0); strings.Join(got, ",") != strings.Join(want1, ",") {
		t.Fatalf("depth 0: %v", got)
	}
	if got := list(dir, 1); strings.Join(got, ",") != strings.Join(want1, ",") {
		t.Fatalf("depth 1: %v", got)
	}
	want2 := []string{j("a.txt"), j("b"), j("b", "c"), j("b", "in-b"), j("z-link")}
	if got := list(dir, 2); strings.Join(got, ",") != strings.Join(want2, ",") {
		t.Fatalf("depth 2: %v (symlinked dirs must not be descended)", got)
	}
	// A listing through a symlink reports paths under the symlink.
	if got := list(j("z-link"), 1); strings.Join(got, ",") != j("z-link", "c")+","+j("z-link", "in-b") {
		t.Fatalf("through symlink: %v", got)
	}
	r, _ := s.ListDir(ctx, &fspb.ListDirRequest{Path: dir})
	if r.Entries[2].Type != fspb.FileType_FILE_TYPE_DIRECTORY || r.Entries[2].GetSymlinkTarget() == "" {
		t.Fatalf("symlink entry %v", r.Entries[2])
	}

	_, err := s.ListDir(ctx, &fspb.ListDirRequest{Path: j("a.txt")})
	wantCode(t, err, connect.CodeInvalidArgument, "path is not a directory")
	_, err = s.ListDir(ctx, &fspb.ListDirRequest{Path: j("missing")})
	wantCode(t, err, connect.CodeNotFound, "")
	_, err = s.ListDir(ctx, &fspb.ListDirRequest{Path: j("a.txt", "x")})
	wantCode(t, err, connect.CodeNotFound, "")
	os.Symlink("loop2", j("loop1"))
	os.Symlink("loop1", j("loop2"))
	_, err = s.ListDir(ctx, &fspb.ListDirRequest{Path: j("loop1")})
	wantCode(t, err, connect.CodeFailedPrecondition, "cyclic symlink")
	_, err = s.ListDir(ctx, &fspb.ListDirRequest{Path: "/" + strings.Repeat("c", 5000)})
	if err == nil {
		t.Fatal("5000-character path listed")
	}
}

func TestListDirOwnerNamesCached(t *testing.T) {
	s := newSvc(t, "")
	dir := t.TempDir()
	for i := range 200 {
		os.WriteFile(filepath.Join(dir, "f"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+string(rune('a'+i/26))), nil, 0o644)
	}
	nm := newNames(s.db)
	l := lister{names: nm, depth: 1, ctx: context.Background()}
	if err := l.walk(dir, dir, 1); err != nil {
		t.Fatal(err)
	}
	if len(l.out) != 200 || len(nm.uids) != 1 || len(nm.gids) != 1 {
		t.Fatalf("%d entries, %d uid lookups, %d gid lookups", len(l.out), len(nm.uids), len(nm.gids))
	}
}
