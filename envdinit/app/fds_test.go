package app

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCloseInheritedOnExec(t *testing.T) {
	// An fd as a launcher would leave it: open without O_CLOEXEC.
	fd, err := unix.Open(filepath.Join(t.TempDir(), "inherited"), unix.O_CREAT|unix.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	flags, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if flags&unix.FD_CLOEXEC != 0 {
		t.Fatal("fd opened close-on-exec already")
	}
	if fds, err := openFDs(); err != nil || !slices.Contains(fds, fd) {
		t.Fatalf("openFDs %v misses fd %d: %v", fds, fd, err)
	}
	if err := closeInheritedOnExec(); err != nil {
		t.Fatal(err)
	}
	flags, _ = unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if flags&unix.FD_CLOEXEC == 0 {
		t.Fatal("inherited fd is not close-on-exec")
	}
	// stdin, stdout and stderr stay inheritable.
	for _, f := range []*os.File{os.Stdin, os.Stdout, os.Stderr} {
		if flags, _ := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0); flags&unix.FD_CLOEXEC != 0 {
			t.Errorf("fd %d marked close-on-exec", f.Fd())
		}
	}
}
