package filesystem

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/plugins/users"
)

// MetadataPrefix is the xattr namespace that carries file metadata (WIRE §6.2, §7.7).
const MetadataPrefix = "user.e2b."

// names resolves uid/gid to names through the users DB, memoising per call
// so that a listing of 10,000 entries takes the DB lock once per distinct id.
type names struct {
	db     *users.DB
	uids   map[uint32]string
	gids   map[uint32]string
	xattrs []byte // scratch buffer for listxattr
}

func newNames(db *users.DB) *names {
	return &names{db: db, uids: map[uint32]string{}, gids: map[uint32]string{}}
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

// entryInfo builds the §6.2 EntryInfo of path from an lstat.
func (n *names) entryInfo(path string) (*fspb.EntryInfo, error) {
	var st unix.Stat_t
	if err := lstat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
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

// fromStat fills an EntryInfo from an lstat result.
func (n *names) fromStat(path, name string, st *unix.Stat_t) *fspb.EntryInfo {
	mode := fileMode(st.Mode)
	e := &fspb.EntryInfo{
		Name:        name,
		Path:        path,
		Size:        st.Size,
		Permissions: mode.String(),
		Owner:       n.user(st.Uid),
		Group:       n.group(st.Gid),
	}
	if st.Mtim.Sec != 0 || st.Mtim.Nsec != 0 {
		e.ModifiedTime = &timestamppb.Timestamp{Seconds: st.Mtim.Sec, Nanos: int32(st.Mtim.Nsec)}
	}
	if mode&fs.ModeSymlink != 0 {
		// Type and permission bits are the final target's; the target
		// reported is fully resolved, or the link's own path if that fails.
		target, err := filepath.EvalSymlinks(path)
		if err != nil {
			target = path
		} else if !filepath.IsAbs(target) {
			if abs, err := filepath.Abs(target); err == nil {
				target = abs
			}
		}
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
	e.Metadata = n.metadata(path)
	return e
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
	if n.xattrs == nil {
		n.xattrs = make([]byte, 4096)
	}
	sz, err := unix.Listxattr(path, n.xattrs)
	if errors.Is(err, unix.ERANGE) {
		if sz, err = unix.Listxattr(path, nil); err == nil {
			n.xattrs = make([]byte, sz+256)
			sz, err = unix.Listxattr(path, n.xattrs)
		}
	}
	if err != nil || sz <= 0 {
		return nil
	}
	var md map[string]string
	for _, key := range strings.Split(string(n.xattrs[:sz]), "\x00") {
		if !strings.HasPrefix(key, MetadataPrefix) || len(key) == len(MetadataPrefix) {
			continue
		}
		val, err := getxattr(path, key)
		if err != nil {
			continue
		}
		k := key[len(MetadataPrefix):]
		if !utf8.ValidString(k) || !utf8.Valid(val) {
			continue
		}
		if md == nil {
			md = map[string]string{}
		}
		md[k] = string(val)
	}
	return md
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
