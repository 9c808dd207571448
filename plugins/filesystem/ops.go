package filesystem

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/internal/gomaxprocs"
	"github.com/envd-project/envd/plugins/pluginkit/handoff"
)

// Stat is WIRE §6.3.
func (s *Service) Stat(ctx context.Context, req *fspb.StatRequest) (*fspb.StatResponse, error) {
	_, p, err := s.userPath(ctx, req.GetPath())
	if err != nil {
		return nil, err
	}
	e, err := newNames(s.db).entryInfo(p)
	if err != nil {
		return nil, err
	}
	return &fspb.StatResponse{Entry: e}, nil
}

// MakeDir is WIRE §6.5.
func (s *Service) MakeDir(ctx context.Context, req *fspb.MakeDirRequest) (*fspb.MakeDirResponse, error) {
	u, p, err := s.userPath(ctx, req.GetPath())
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(p)
	switch {
	case err == nil && fi.IsDir():
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("directory already exists: %s", p))
	case err == nil:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("path already exists but it is not a directory: %s", p))
	case !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, unix.ENOTDIR):
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("error getting file info: %w", err))
	}
	if err := ensureDirs(p, u); err != nil {
		return nil, dirsError(err)
	}
	e, err := newNames(s.db).entryInfo(p)
	if err != nil {
		return nil, err
	}
	return &fspb.MakeDirResponse{Entry: e}, nil
}

// dirsError gives ensureDirs' failure its code: permission_denied where
// the user's own rights refused it (placer.go), internal otherwise (§6.5).
func dirsError(err error) error {
	if errors.As(err, new(*errPermission)) {
		return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("permission denied: %w", err))
	}
	return connect.NewError(connect.CodeInternal, err)
}

// Move is WIRE §6.6.
func (s *Service) Move(ctx context.Context, req *fspb.MoveRequest) (*fspb.MoveResponse, error) {
	u, src, err := s.userPath(ctx, req.GetSource())
	if err != nil {
		return nil, err
	}
	dst, err := s.resolve(req.GetDestination(), u)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := lstat(src, &st); err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("source file not found: %s", src))
		}
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("error getting file info: %w", &fs.PathError{Op: "lstat", Path: src, Err: err}))
	}
	if err := rename(src, dst, u); err != nil {
		switch {
		case errors.As(err, new(*errPermission)):
			return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("permission denied: %w", err))
		case errors.Is(err, fs.ErrNotExist):
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("error renaming: %w", err))
		case strings.HasPrefix(err.Error(), "path is a file"), strings.HasPrefix(err.Error(), "error creating directory"):
			return nil, connect.NewError(connect.CodeInternal, err)
		}
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("error renaming: %w", err))
	}
	e, err := newNames(s.db).entryInfo(dst)
	if err != nil {
		return nil, err
	}
	return &fspb.MoveResponse{Entry: e}, nil
}

// Remove is WIRE §6.7: rm -rf, a missing path is success.
func (s *Service) Remove(ctx context.Context, req *fspb.RemoveRequest) (*fspb.RemoveResponse, error) {
	u, p, err := s.userPath(ctx, req.GetPath())
	if err != nil {
		return nil, err
	}
	if err := removeAll(p, u); err != nil {
		if errors.As(err, new(*errPermission)) {
			return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("permission denied: %w", err))
		}
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("error removing file or directory: %w", err))
	}
	return &fspb.RemoveResponse{}, nil
}

// ListDir is WIRE §6.4.
func (s *Service) ListDir(ctx context.Context, req *fspb.ListDirRequest) (*fspb.ListDirResponse, error) {
	depth := int(req.GetDepth())
	if depth == 0 {
		depth = 1
	}
	_, requested, err := s.userPath(ctx, req.GetPath())
	if err != nil {
		return nil, err
	}
	real, err := followSymlinks(requested)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(real)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("directory not found: %w", err))
		}
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("error getting file info: %w", err))
	}
	if !fi.IsDir() {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("path is not a directory: %s", requested))
	}
	l := lister{names: newNames(s.db), depth: depth, ctx: ctx, offered: handoff.Offered(ctx)}
	if depth > 1 && handoff.DeclineOffer(ctx) {
		// A tree's size is known only once it is walked: it is handed over.
		return nil, errOfferDeclined
	}
	if err := l.walk(real, requested, 1); err != nil {
		if errors.Is(err, errOfferDeclined) {
			return nil, err
		}
		if ce := new(connect.Error); errors.As(err, &ce) {
			return nil, ce
		}
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("error reading directory %s: %w", real, err))
	}
	return &fspb.ListDirResponse{Entries: l.out}, nil
}

func followSymlinks(p string) (string, error) {
	r, err := filepath.EvalSymlinks(p)
	if err == nil {
		return r, nil
	}
	switch {
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR):
		return "", connect.NewError(connect.CodeNotFound, fmt.Errorf("path not found: %w", err))
	case errors.Is(err, unix.ELOOP) || strings.Contains(err.Error(), "too many links"):
		return "", connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("cyclic symlink or chain >255 links at %q", p))
	}
	return "", connect.NewError(connect.CodeInternal, fmt.Errorf("error resolving symlink: %w", err))
}

type lister struct {
	names *names
	depth int
	ctx   context.Context
	// offered: envd-init offered the call through its proxy (a copy of
	// the answer) before handing the connection over (none).
	offered bool
	out     []*fspb.EntryInfo
}

// offerEntries is the longest listing answered through envd-init's proxy
// when it is offered there: about 200 bytes an entry in Connect JSON, so
// that its answer stays near handoff.OfferLimit, which bounds a proxied
// download for the same reason (the copy through envd-init grows with the
// answer, the handoff's cost does not). The directory's first names decide
// it, before any entry is stat-ed: a declined listing costs one getdents.
const offerEntries = 256

// errOfferDeclined ends an offered listing that is too long to be copied
// through envd-init: the answer becomes the decline (handoff.DeclineOffer)
// and the call is served again on the handed-over connection.
var errOfferDeclined = connect.NewError(connect.CodeUnavailable, errors.New("listing declined through the proxy"))

// parallelMin is the directory size from which entries are stat-ed by
// several goroutines: two syscalls per entry (fstatat, listxattr) dominate a
// large listing, and they run in parallel on every core.
const parallelMin = 512

// statBlock is how many entries a worker takes at a time: small enough to
// even out workers slowed by a busy core, large enough to keep the shared
// counter cold.
const statBlock = 128

type statResult struct {
	e    *fspb.EntryInfo
	name string // the entry's name on disk (e.Name may be escaped)
	dir  bool
	err  error
}

// walk lists real (reporting paths under shown) in lexical pre-order, as
// filepath.WalkDir would, without following symlinked subdirectories. It
// stats through the directory fd, which spares the kernel a path walk per
// entry.
func (l *lister) walk(real, shown string, level int) error {
	if err := l.ctx.Err(); err != nil {
		return connect.NewError(connect.CodeCanceled, err)
	}
	// O_DIRECTORY: an entry swapped for a FIFO since its stat is refused
	// (ENOTDIR), never opened (which would block).
	dfd, err := unix.Open(real, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		if level > 1 && (errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR)) {
			return nil // vanished (or replaced) during the walk
		}
		return &fs.PathError{Op: "open", Path: real, Err: err}
	}
	f := os.NewFile(uintptr(dfd), real)
	defer f.Close()
	list, err := l.readNames(f, level)
	if err != nil {
		return err
	}
	slices.Sort(list)
	dirfd := int(f.Fd())
	// Entry paths are prefix + name, which is what filepath.Join gives for
	// a single clean name (readdir never yields "", ".", ".." or a slash).
	realPrefix, shownPrefix := joinPrefix(real), joinPrefix(shown)
	samePrefix := realPrefix == shownPrefix
	results := make([]statResult, len(list))
	// One allocation for all entries and their times instead of two each.
	entries := make([]fspb.EntryInfo, len(list))
	times := make([]timestamppb.Timestamp, len(list))
	statOne := func(nm *names, i int) {
		name := list[i]
		var st unix.Stat_t
		if err := fstatat(dirfd, name, &st); err != nil {
			if !errors.Is(err, unix.ENOENT) {
				results[i].err = &fs.PathError{Op: "lstat", Path: realPrefix + name, Err: err}
			}
			return // a vanished entry is skipped
		}
		path := realPrefix + name
		e := &entries[i]
		nm.fill(e, &times[i], entryRef{dirfd: dirfd, name: name, path: path}, &st)
		if !samePrefix {
			e.Path = wireName(shownPrefix + name)
		}
		results[i] = statResult{e: e, name: name, dir: st.Mode&unix.S_IFMT == unix.S_IFDIR}
	}
	if workers := min(gomaxprocs.Procs(), (len(list)+statBlock-1)/statBlock); len(list) >= parallelMin && workers > 1 {
		// envd-fs runs on one P between such listings (package gomaxprocs).
		defer gomaxprocs.Widen()()
		var next atomic.Int64
		var wg sync.WaitGroup
		for w := range workers {
			nm := l.names
			if w > 0 {
				nm = newNames(l.names.db) // names caches are per goroutine
			}
			wg.Go(func() {
				for {
					lo := int(next.Add(statBlock)) - statBlock
					if lo >= len(list) {
						return
					}
					for i := lo; i < min(lo+statBlock, len(list)); i++ {
						statOne(nm, i)
					}
				}
			})
		}
		wg.Wait()
	} else {
		for i := range list {
			statOne(l.names, i)
		}
	}
	if l.out == nil {
		l.out = make([]*fspb.EntryInfo, 0, len(list))
	}
	for _, r := range results {
		if r.err != nil {
			return r.err
		}
		if r.e == nil {
			continue
		}
		l.out = append(l.out, r.e)
		if r.dir && level < l.depth {
			if err := l.walk(realPrefix+r.name, shownPrefix+r.name, level+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// readNames reads the names in f. An offered listing reads at most
// offerEntries+1 of them first, and declines the offer when there are more.
func (l *lister) readNames(f *os.File, level int) ([]string, error) {
	if !l.offered || level != 1 {
		return f.Readdirnames(-1)
	}
	list, err := f.Readdirnames(offerEntries + 1)
	if errors.Is(err, io.EOF) {
		return list, nil // an empty directory
	}
	if err != nil || len(list) <= offerEntries {
		return list, err
	}
	if handoff.DeclineOffer(l.ctx) {
		return nil, errOfferDeclined
	}
	rest, err := f.Readdirnames(-1)
	return append(list, rest...), err
}

// joinPrefix returns what filepath.Join(dir, name) puts before a clean
// single-component name.
func joinPrefix(dir string) string {
	if dir == "" {
		return ""
	}
	switch dir = filepath.Clean(dir); dir {
	case ".":
		return ""
	case string(filepath.Separator):
		return dir
	}
	return dir + string(filepath.Separator)
}

func fstatat(dirfd int, name string, st *unix.Stat_t) error {
	for {
		err := unix.Fstatat(dirfd, name, st, unix.AT_SYMLINK_NOFOLLOW)
		if err != unix.EINTR {
			return err
		}
	}
}
