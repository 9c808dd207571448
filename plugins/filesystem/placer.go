package filesystem

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/envd-project/envd/internal/users"
)

// Writing as a user without lending the user root's reach.
//
// envd-fs runs as root and, like the references (WIRE §4.2), writes and
// creates for a user anywhere, giving new things the user's ownership. The
// client that names a path is trusted; the sandbox user is not: whatever the
// user owns (a symlink, a directory they can rename entries in, a hard link
// they made) may have been swapped a moment before envd-fs walks the path.
// So a path is written in one of two ways:
//
//   - strict: as root, but the whole path is resolved with openat2's
//     RESOLVE_NO_SYMLINKS and the final entry is opened O_NOFOLLOW, so the
//     kernel refuses, atomically, any symlink anywhere in it. Everything
//     after that is relative to the directory fd it gave (mkdirat, openat,
//     linkat), so nothing can be redirected between a check and a use. A
//     path without symlinks keeps the reference's behaviour: the user may
//     create files and directories where only root could.
//   - as the user: a path with a symlink in it is resolved and opened with
//     the user's filesystem identity (setfsuid/setfsgid/setgroups on a locked
//     OS thread), so the kernel follows the links while checking the user's
//     own permissions at every step: a link leads only where the user could
//     have written anyway, however fast it is swapped.
//
// Why not only one of them: RESOLVE_NO_SYMLINKS alone would refuse every
// path with a symlink, including the user's own harmless ones (~/link →
// ~/file); the fsuid alone would refuse every write outside what the user
// may write, which clients of the references rely on (uploads as user into
// /opt). Hard links cannot be refused by a resolve flag: an existing target
// with other names that the user does not own is written only if the user
// could open it for writing. New entries are never created by root and then
// chowned by name: a file is staged unnamed and chowned through its fd; a
// directory is made by the user where the user may, else by root and
// chowned through an fd of that very directory. Nothing that this call did
// not create is ever chowned.
//
// Per-thread credentials are safe in Go: a goroutine locked to its thread
// keeps that thread to itself, and the runtime starts new threads from a
// clean template thread while the caller is locked, so no other goroutine
// and no new thread ever runs with the user's identity.

// errPermission is a write the user's own rights do not allow.
type errPermission struct{ err error }

func (e *errPermission) Error() string { return e.err.Error() }
func (e *errPermission) Unwrap() error { return e.err }

// errSymlink means a strict resolution met a symlink: retry as the user.
var errSymlink = errors.New("path has a symlink")

// withFSUser runs fn with u's filesystem identity on a locked OS thread. fn must
// only make blocking file syscalls (nothing that parks the goroutine).
func withFSUser(u *users.User, fn func() error) error {
	if u.UID == 0 {
		return fn()
	}
	runtime.LockOSThread()
	saved, err := unix.Getgroups()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("getgroups: %w", err)
	}
	groups := make([]int, 0, len(u.Groups)+1)
	groups = append(groups, int(u.GID))
	for _, g := range u.Groups {
		groups = append(groups, int(g))
	}
	clean := true
	defer func() {
		unix.Setfsuid(0)
		unix.Setfsgid(0)
		if unix.Setgroups(saved) != nil {
			clean = false
		}
		if prev, _ := unix.SetfsuidRetUid(-1); prev != 0 {
			clean = false
		}
		if prev, _ := unix.SetfsgidRetGid(-1); prev != 0 {
			clean = false
		}
		// A thread that could not be restored is never reused: it ends
		// with this goroutine.
		if clean {
			runtime.UnlockOSThread()
		}
	}()
	if err := unix.Setgroups(groups); err != nil {
		return fmt.Errorf("setgroups for user %s: %w", u.Name, err)
	}
	unix.Setfsgid(int(u.GID))
	unix.Setfsuid(int(u.UID))
	// setfsuid reports no failure; read the value back instead.
	if cur, _ := unix.SetfsuidRetUid(-1); cur != int(u.UID) {
		return fmt.Errorf("cannot take the filesystem identity of user %s", u.Name)
	}
	if cur, _ := unix.SetfsgidRetGid(-1); cur != int(u.GID) {
		return fmt.Errorf("cannot take the filesystem group of user %s", u.Name)
	}
	return fn()
}

// placer resolves the paths of one write for user u.
type placer struct {
	u      *users.User
	strict bool
}

func newPlacer(u *users.User) placer { return placer{u: u, strict: u.UID != 0} }

// do runs fn with the identity this placer resolves paths with.
func (pl placer) do(fn func() error) error {
	if pl.strict {
		return fn()
	}
	return withFSUser(pl.u, fn)
}

// retry runs op strictly first and, when the path has a symlink, again as
// the user.
func (pl placer) retry(op func(placer) error) error {
	err := op(pl)
	if pl.strict && errors.Is(err, errSymlink) {
		pl.strict = false
		err = op(pl)
	}
	return err
}

func isPerm(err error) bool { return errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) }

// wrap turns ELOOP under strict resolution into errSymlink and a refusal
// under the user's identity into errPermission.
func (pl placer) wrap(op, path string, err error) error {
	if err == nil {
		return nil
	}
	if pl.strict && errors.Is(err, unix.ELOOP) {
		return errSymlink
	}
	perr := &fs.PathError{Op: op, Path: path, Err: err}
	if !pl.strict && pl.u.UID != 0 && isPerm(err) {
		return &errPermission{perr}
	}
	return perr
}

// openDir opens dir as an O_PATH directory fd. Call inside pl.do.
func (pl placer) openDir(dir string) (int, error) {
	for {
		var fd int
		var err error
		if pl.strict {
			fd, err = unix.Openat2(unix.AT_FDCWD, dir, &unix.OpenHow{
				Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
				Resolve: unix.RESOLVE_NO_SYMLINKS,
			})
		} else {
			fd, err = unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		}
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		return fd, pl.wrap("open", dir, err)
	}
}

// ensureDir opens dir, creating every missing component (mode 0755, owned
// by the user) first. Call inside pl.do.
func (pl placer) ensureDir(dir string) (int, error) {
	dir = filepath.Clean(dir)
	fd, err := pl.openDir(dir)
	switch {
	case err == nil:
		return fd, nil
	case errors.Is(err, unix.ENOTDIR):
		return -1, pl.firstFile(dir)
	case !errors.Is(err, unix.ENOENT):
		return -1, err
	}
	parent := filepath.Dir(dir)
	if parent == dir {
		return -1, err
	}
	pfd, err := pl.ensureDir(parent)
	if err != nil {
		return -1, err
	}
	defer unix.Close(pfd)
	return pl.mkdirAt(pfd, filepath.Base(dir), dir)
}

// firstFile names the component of dir that is not a directory.
func (pl placer) firstFile(dir string) error {
	for p := dir; ; {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Mode&unix.S_IFMT != unix.S_IFLNK {
			return fmt.Errorf("path is a file: %s", p)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return fmt.Errorf("path is a file: %s", dir)
		}
		p = parent
	}
}

// mkdirAt makes name in the directory pfd and opens it.
func (pl placer) mkdirAt(pfd int, name, path string) (int, error) {
	byRoot := false
	var err error
	if pl.strict && pl.u.UID != 0 {
		// Where the user may create it, the user does: nothing to chown by
		// name afterwards. Where only root may (a parent the user cannot
		// write, so cannot race in either), root does and chowns it through
		// an fd of the new directory below.
		err = withFSUser(pl.u, func() error { return unix.Mkdirat(pfd, name, 0o755) })
		if isPerm(err) {
			err = unix.Mkdirat(pfd, name, 0o755)
			byRoot = err == nil
		}
	} else {
		err = unix.Mkdirat(pfd, name, 0o755)
	}
	if err != nil && !errors.Is(err, unix.EEXIST) {
		if werr := pl.wrap("mkdir", path, err); errors.Is(werr, errSymlink) || errors.As(werr, new(*errPermission)) {
			return -1, werr
		}
		return -1, fmt.Errorf("error creating directory: %w", &fs.PathError{Op: "mkdir", Path: path, Err: err})
	}
	// EEXIST: made by someone else meanwhile, used as it is.
	flags := unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC
	if pl.strict {
		flags |= unix.O_NOFOLLOW
	}
	fd, oerr := unix.Openat(pfd, name, flags, 0)
	if oerr != nil {
		if errors.Is(oerr, unix.ENOTDIR) {
			return -1, fmt.Errorf("path is a file: %s", path)
		}
		return -1, pl.wrap("open", path, oerr)
	}
	if byRoot {
		if err := unix.Fchownat(fd, "", int(pl.u.UID), int(pl.u.GID), unix.AT_EMPTY_PATH); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("error changing ownership of %s: %w", path, err)
		}
	}
	return fd, nil
}

// ensureDirs creates every missing directory of dir for u (WIRE §6.5), as
// described at the top of this file.
func ensureDirs(dir string, u *users.User) error {
	return newPlacer(u).retry(func(pl placer) error {
		return pl.do(func() error {
			fd, err := pl.ensureDir(dir)
			if err == nil {
				unix.Close(fd)
			}
			return err
		})
	})
}

// errNotRegular is a target that is neither a regular file nor a directory.
var errNotRegular = errors.New("not a regular file")

// openRegular opens name in dirfd with flags (O_RDONLY or O_WRONLY) if it
// is a regular file. It never opens anything else: the entry is first
// opened O_PATH, which runs no driver and cannot block on a FIFO, and only
// a regular file is then reopened for I/O through /proc/self/fd (or, where
// /proc is missing, opened non-blocking and checked to be the same inode).
// A directory gives EISDIR, anything else errNotRegular. nofollow refuses a
// final symlink (ELOOP).
func openRegular(dirfd int, name string, flags int, nofollow bool) (*os.File, *unix.Stat_t, error) {
	pflags := unix.O_PATH | unix.O_CLOEXEC
	if nofollow {
		pflags |= unix.O_NOFOLLOW
	}
	pfd, err := unix.Openat(dirfd, name, pflags, 0)
	if err != nil {
		return nil, nil, err
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return nil, nil, err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
	case unix.S_IFDIR:
		return nil, &st, unix.EISDIR
	case unix.S_IFLNK:
		return nil, &st, unix.ELOOP
	default:
		return nil, &st, errNotRegular
	}
	fd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(pfd), flags|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if errors.Is(err, unix.ENOENT) {
		fd, err = unix.Openat(dirfd, name, flags|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK|pflags&unix.O_NOFOLLOW, 0)
		if err == nil {
			var st2 unix.Stat_t
			if err = unix.Fstat(fd, &st2); err == nil && (st2.Dev != st.Dev || st2.Ino != st.Ino) {
				err = unix.ESTALE // swapped between the two opens
			}
			if err == nil {
				_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, flags)
			}
			if err != nil {
				unix.Close(fd)
			}
		}
	}
	if err != nil {
		return nil, &st, err
	}
	return os.NewFile(uintptr(fd), name), &st, nil
}

// parentAt opens the directory of p (creating it if create) and returns it
// with p's last element. Call inside pl.do.
func (pl placer) parentAt(p string, create bool) (int, string, error) {
	p = filepath.Clean(p)
	dir, base := filepath.Dir(p), filepath.Base(p)
	if base == "/" || base == "." || base == ".." {
		return -1, "", fmt.Errorf("%s has no parent directory to work in", p)
	}
	var fd int
	var err error
	if create {
		fd, err = pl.ensureDir(dir)
	} else {
		fd, err = pl.openDir(dir)
	}
	return fd, base, err
}

// removeAll is rm -rf of p for u (WIRE §6.7) without following a symlink
// the user planted above p: the parent is resolved as placer does, and the
// tree below is removed through that directory fd (os.Root never follows
// a symlink out of it). A missing path is success.
func removeAll(p string, u *users.User) error {
	if u.UID == 0 {
		return os.RemoveAll(p)
	}
	return newPlacer(u).retry(func(pl placer) error {
		return pl.do(func() error {
			fd, base, err := pl.parentAt(p, false)
			if err != nil {
				if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
					return nil
				}
				return err
			}
			defer unix.Close(fd)
			root, err := os.OpenRoot("/proc/self/fd/" + strconv.Itoa(fd))
			if err != nil {
				return pl.wrap("open", filepath.Dir(p), err)
			}
			defer root.Close()
			if err := root.RemoveAll(base); err != nil {
				if pe := new(fs.PathError); errors.As(err, &pe) {
					return pl.wrap(pe.Op, p, pe.Err)
				}
				return err
			}
			return nil
		})
	})
}

// rename moves src to dst for u (WIRE §6.6), creating dst's missing parents,
// with both parents resolved as placer does and the rename done between
// the two directory fds.
func rename(src, dst string, u *users.User) error {
	pl := newPlacer(u)
	if u.UID == 0 {
		if err := ensureDirs(filepath.Dir(dst), u); err != nil {
			return err
		}
		return os.Rename(src, dst)
	}
	return pl.retry(func(pl placer) error {
		return pl.do(func() error {
			sfd, sbase, err := pl.parentAt(src, false)
			if err != nil {
				if errors.Is(err, unix.ENOTDIR) {
					return &fs.PathError{Op: "rename", Path: src, Err: unix.ENOENT}
				}
				return err
			}
			defer unix.Close(sfd)
			dfd, dbase, err := pl.parentAt(dst, true)
			if err != nil {
				return err
			}
			defer unix.Close(dfd)
			if err := unix.Renameat(sfd, sbase, dfd, dbase); err != nil {
				return pl.wrap("rename", src, err)
			}
			return nil
		})
	})
}
