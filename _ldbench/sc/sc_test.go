package sc

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

var dir = func() string {
	d, _ := os.MkdirTemp("/var/tmp", "sc-")
	for i := 0; i < 10000; i++ {
		os.WriteFile(filepath.Join(d, fmt.Sprintf("f%05d", i)), nil, 0o644)
	}
	return d
}()

func names() []string {
	f, _ := os.Open(dir)
	defer f.Close()
	n, _ := f.Readdirnames(-1)
	return n
}

func BenchmarkReaddir(b *testing.B) {
	for b.Loop() {
		names()
	}
}

func BenchmarkFstatat(b *testing.B) {
	ns := names()
	fd, _ := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	defer unix.Close(fd)
	var st unix.Stat_t
	for b.Loop() {
		for _, n := range ns {
			unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW)
		}
	}
}

func BenchmarkListxattrAbs(b *testing.B) {
	ns := names()
	buf := make([]byte, 4096)
	for b.Loop() {
		for _, n := range ns {
			unix.Listxattr(dir+"/"+n, buf)
		}
	}
}

func listxattrat(dfd int, name string, buf []byte) (int, error) {
	p, _ := unix.BytePtrFromString(name)
	r, _, e := unix.Syscall6(unix.SYS_LISTXATTRAT, uintptr(dfd), uintptr(unsafe.Pointer(p)), 0, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func BenchmarkListxattrat(b *testing.B) {
	ns := names()
	fd, _ := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	defer unix.Close(fd)
	buf := make([]byte, 4096)
	if _, err := listxattrat(fd, ns[0], buf); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		for _, n := range ns {
			listxattrat(fd, n, buf)
		}
	}
}

func BenchmarkGetpid(b *testing.B) {
	for b.Loop() {
		for range 10000 {
			unix.Getppid()
		}
	}
}
