package sysinit

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// checkExecutable reports why path, taken inside root (absolute symlinks
// and .. resolve in root, as they will after the chroot), could not be
// exec'd there: it must be a regular file with an execute bit, and an ELF
// for this machine whose interpreter (dynamic loader) is in root, or a
// script whose interpreter is. switchRoot checks its init this way before
// it frees the initramfs, after which a failed exec leaves nothing to go
// back to. (The loader's own libraries are not followed.)
func checkExecutable(root, path string) error {
	return checkExec(root, path, 0)
}

func checkExec(root, path string, depth int) error {
	if depth > 4 {
		return fmt.Errorf("%s: interpreters nested too deep", path)
	}
	f, err := openInRoot(root, path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file (%s)", path, fi.Mode().Type())
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not executable (mode %s)", path, fi.Mode().Perm())
	}
	head := make([]byte, 256)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, []byte(elf.ELFMAG)):
		ef, err := elf.NewFile(f)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		defer ef.Close()
		if want, ok := machines[runtime.GOARCH]; ok && ef.Machine != want {
			return fmt.Errorf("%s is built for %s, this machine is %s", path, ef.Machine, want)
		}
		for _, p := range ef.Progs {
			if p.Type != elf.PT_INTERP {
				continue
			}
			b, err := io.ReadAll(p.Open())
			if err != nil {
				return fmt.Errorf("%s: interpreter: %w", path, err)
			}
			interp := string(bytes.TrimRight(b, "\x00"))
			if err := checkExec(root, interp, depth+1); err != nil {
				return fmt.Errorf("%s needs %s: %w", path, interp, err)
			}
		}
		return nil
	case bytes.HasPrefix(head, []byte("#!")):
		line, _, _ := bytes.Cut(head[2:], []byte("\n"))
		fields := strings.Fields(string(line))
		if len(fields) == 0 {
			return fmt.Errorf("%s: #! names no interpreter", path)
		}
		if err := checkExec(root, fields[0], depth+1); err != nil {
			return fmt.Errorf("%s is run by %s: %w", path, fields[0], err)
		}
		return nil
	}
	return fmt.Errorf("%s is neither an ELF executable nor a #! script", path)
}

var machines = map[string]elf.Machine{
	"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64, "386": elf.EM_386, "arm": elf.EM_ARM,
	"riscv64": elf.EM_RISCV, "ppc64le": elf.EM_PPC64, "s390x": elf.EM_S390,
}

// openInRoot opens path as if root were / (openat2 RESOLVE_IN_ROOT; on a
// kernel before 5.6, a plain open under root, which resolves an absolute
// symlink outside it).
func openInRoot(root, path string) (*os.File, error) {
	dir, err := os.Open(root)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	fd, err := unix.Openat2(int(dir.Fd()), strings.TrimPrefix(path, "/"), &unix.OpenHow{
		Flags: unix.O_RDONLY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT,
	})
	if errors.Is(err, unix.ENOSYS) {
		return os.Open(filepath.Join(root, path))
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: filepath.Join(root, path), Err: err}
	}
	return os.NewFile(uintptr(fd), filepath.Join(root, path)), nil
}
