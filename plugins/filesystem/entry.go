package filesystem

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sync/atomic"
	"unicode/utf8"
	"unsafe"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/internal/users"
)

// MetadataPrefix is the xattr namespace that carries file metadata (WIRE §6.2, §7.7).
const MetadataPrefix = "user.e2b."

// names resolves uid/gid to names through the users DB, memoising per call
// so that a listing of 10,000 entries takes the DB lock once per distinct id.
// One names serves one goroutine.
type names struct {
	db     *users.DB
	uids   map[uint32]string
	gids   map[uint32]string
	perms  map[uint32]string // FileMode.String() by raw st_mode
	xattrs []byte            // scratch buffer for listxattr
	cname  []byte            // scratch NUL-terminated name for listxattrat
}

func newNames(db *users.DB) *names {
	return &names{db: db, uids: map[uint32]string{}, gids: map[uint32]string{}, perms: map[uint32]string{}}
}

func (n *names) user(uid uint32) string {
	if s, ok := n.uids[uid]; ok {
		return s
	}
	s := n.db.UserName(uid)
	n.uids[uid] = s
	return s
}

func (n *names) group(gid uint32) string {
	if s, ok := n.gids[gid]; ok {
		return s
	}
	s := n.db.GroupName(gid)
	n.gids[gid] = s
	return s
}

func (n *names) permissions(mode uint32) string {
	if s, ok := n.perms[mode]; ok {
		return s
	}
	s := fileMode(mode).String()
	n.perms[mode] = s
	return s
}

// entryInfo builds the §6.2 EntryInfo of path from an lstat.
func (n *names) entryInfo(path string) (*fspb.EntryInfo, error) {
	var st unix.Stat_t
	if err := lstat(path, &st); err != nil {
		// ENOTDIR: a parent is a file, so the path is missing too (§6.3;
		// the SDK's exists() needs not_found).
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("file not found: %w", &fs.PathError{Op: "lstat", Path: path, Err: err}))
		}
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("error getting file info: %w", &fs.PathError{Op: "lstat", Path: path, Err: err}))
	}
	return n.fromStat(path, filepath.Base(path), &st), nil
}

func lstat(path string, st *unix.Stat_t) error {
	for {
		err := unix.Lstat(path, st)
		if err != unix.EINTR {
			return err
		}
	}
}

// fromStat builds an EntryInfo from an lstat result.
func (n *names) fromStat(path, name string, st *unix.Stat_t) *fspb.EntryInfo {
	e := new(fspb.EntryInfo)
	n.fill(e, new(timestamppb.Timestamp), entryRef{dirfd: -1, name: name, path: path}, st)
	return e
}

// entryRef names an entry for the syscalls that follow its lstat: by path,
// or (when dirfd >= 0) also by name relative to an open directory, which
// spares the kernel a walk of the whole path.
type entryRef struct {
	dirfd int
	name  string
	path  string // the real path of the entry
}

// fill sets e (and mt, which becomes e's modified time when there is one)
// from an lstat result. Taking both from the caller lets a listing
// allocate them in bulk.
func (n *names) fill(e *fspb.EntryInfo, mt *timestamppb.Timestamp, ref entryRef, st *unix.Stat_t) {
	// Names that are not UTF-8 go out escaped (rawnames.go).
	e.Name = wireName(ref.name)
	e.Path = wireName(ref.path)
	e.Size = st.Size
	e.Permissions = n.permissions(st.Mode)
	e.Owner = n.user(st.Uid)
	e.Group = n.group(st.Gid)
	if st.Mtim.Sec != 0 || st.Mtim.Nsec != 0 {
		mt.Seconds, mt.Nanos = st.Mtim.Sec, int32(st.Mtim.Nsec)
		e.ModifiedTime = mt
	}
	mode := fileMode(st.Mode)
	if mode&fs.ModeSymlink != 0 {
		// Type and permission bits are the final target's; the target
		// reported is fully resolved, or the link's own path if that fails.
		target, err := filepath.EvalSymlinks(ref.path)
		if err != nil {
			target = ref.path
		} else if !filepath.IsAbs(target) {
			if abs, err := filepath.Abs(target); err == nil {
				target = abs
			}
		}
		target = wireName(target)
		e.SymlinkTarget = &target
		var tst unix.Stat_t
		if err == nil && unix.Stat(target, &tst) == nil {
			tm := fileMode(tst.Mode)
			e.Type = fileType(tm)
			e.Mode = uint32(tm.Perm())
		}
	} else {
		e.Type = fileType(mode)
		e.Mode = uint32(mode.Perm())
	}
	e.Metadata = n.metadataRef(ref)
}

func fileType(m fs.FileMode) fspb.FileType {
	switch {
	case m.IsRegular():
		return fspb.FileType_FILE_TYPE_FILE
	case m.IsDir():
		return fspb.FileType_FILE_TYPE_DIRECTORY
	}
	return fspb.FileType_FILE_TYPE_UNSPECIFIED
}

// fileMode converts a stat mode the way os.Lstat does, so String() matches
// Go's FileMode format byte for byte (WIRE §6.2 permissions).
func fileMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	switch m & unix.S_IFMT {
	case unix.S_IFBLK:
		mode |= fs.ModeDevice
	case unix.S_IFCHR:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFDIR:
		mode |= fs.ModeDir
	case unix.S_IFIFO:
		mode |= fs.ModeNamedPipe
	case unix.S_IFLNK:
		mode |= fs.ModeSymlink
	case unix.S_IFSOCK:
		mode |= fs.ModeSocket
	}
	if m&unix.S_ISGID != 0 {
		mode |= fs.ModeSetgid
	}
	if m&unix.S_ISUID != 0 {
		mode |= fs.ModeSetuid
	}
	if m&unix.S_ISVTX != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}

// metadata reads the user.e2b.* xattrs of path, following symlinks (user
// xattrs cannot be set on a link itself, so a link shows its target's). Keys or values that are not
// valid UTF-8 are skipped; nil when there are none or xattrs are unsupported.
func (n *names) metadata(path string) map[string]string {
	return n.metadataRef(entryRef{dirfd: -1, path: path})
}

func (n *names) metadataRef(ref entryRef) map[string]string {
	if n.xattrs == nil {
		n.xattrs = make([]byte, 4096)
	}
	sz, err := n.listxattr(ref, n.xattrs)
	if errors.Is(err, unix.ERANGE) {
		if sz, err = n.listxattr(ref, nil); err == nil {
			n.xattrs = make([]byte, sz+256)
			sz, err = n.listxattr(ref, n.xattrs)
		}
	}
	if err != nil || sz <= 0 {
		return nil
	}
	var md map[string]string
	for list := n.xattrs[:sz]; len(list) > 0; {
		var key []byte
		if i := bytes.IndexByte(list, 0); i >= 0 {
			key, list = list[:i], list[i+1:]
		} else {
			key, list = list, nil
		}
		if len(key) <= len(MetadataPrefix) || string(key[:len(MetadataPrefix)]) != MetadataPrefix {
			continue
		}
		val, err := getxattr(ref.path, string(key))
		if err != nil {
			continue
		}
		k := key[len(MetadataPrefix):]
		if !utf8.Valid(k) || !utf8.Valid(val) {
			continue
		}
		if md == nil {
			md = map[string]string{}
		}
		md[string(k)] = string(val)
	}
	return md
}

// noListxattrat is set once the kernel turns listxattrat(2) down (it came
// with Linux 6.13); every later call then goes by path.
var noListxattrat atomic.Bool

// listxattr lists the xattr names of the entry, following symlinks.
func (n *names) listxattr(ref entryRef, buf []byte) (int, error) {
	at := ref.dirfd >= 0 && !noListxattrat.Load()
	if at {
		n.cname = append(append(n.cname[:0], ref.name...), 0)
		sz, err := listxattrat(ref.dirfd, n.cname, buf)
		switch err {
		case unix.ENOSYS: // an older kernel
			noListxattrat.Store(true)
		case unix.EPERM: // perhaps a seccomp filter that does not know the call
		default:
			return sz, err
		}
	}
	for {
		sz, err := unix.Listxattr(ref.path, buf)
		if err == unix.EINTR {
			continue
		}
		if at && err == nil {
			noListxattrat.Store(true) // the path works where the call did not
		}
		return sz, err
	}
}

// listxattrat is listxattrat(2) with a NUL-terminated name.
func listxattrat(dirfd int, cname []byte, buf []byte) (int, error) {
	if bytes.IndexByte(cname, 0) != len(cname)-1 {
		return 0, unix.EINVAL
	}
	var ptr unsafe.Pointer
	if len(buf) > 0 {
		ptr = unsafe.Pointer(&buf[0])
	}
	for {
		r, _, e := unix.Syscall6(unix.SYS_LISTXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(&cname[0])), 0, uintptr(ptr), uintptr(len(buf)), 0)
		switch e {
		case 0:
			return int(r), nil
		case unix.EINTR:
			continue
		}
		return 0, e
	}
}

func getxattr(path, key string) ([]byte, error) {
	buf := make([]byte, 256)
	for range 3 {
		n, err := unix.Getxattr(path, key, buf)
		if err == nil {
			return buf[:n], nil
		}
		if !errors.Is(err, unix.ERANGE) {
			return nil, err
		}
		n, err = unix.Getxattr(path, key, nil)
		if err != nil {
			return nil, err
		}
		buf = make([]byte, n+64)
	}
	return nil, unix.ERANGE
}
