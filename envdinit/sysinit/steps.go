package sysinit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// isMounted reports whether path is a mount of the filesystem type magic
// (statfs, so it needs no /proc).
func isMounted(path string, magic int64) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	if int64(st.Type) != magic {
		return false
	}
	// The same type as the parent is not a mount of its own (a tmpfs root
	// with a plain /run directory in it).
	var parent unix.Statfs_t
	var self, up unix.Stat_t
	if unix.Stat(path, &self) == nil && unix.Stat(filepath.Dir(path), &up) == nil &&
		unix.Statfs(filepath.Dir(path), &parent) == nil && int64(parent.Type) == magic {
		return self.Dev != up.Dev
	}
	return true
}

// mountFS mounts fstype on target unless a filesystem of that type is
// already mounted there. The mount point is created when missing (a
// read-only root that lacks it makes this fail, and the step is logged).
func mountFS(source, target, fstype string, flags uintptr, data string, magic int64) error {
	if isMounted(target, magic) {
		return nil
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("mount point %s: %w", target, err)
	}
	if err := unix.Mount(source, target, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", fstype, target, err)
	}
	return nil
}

// isInitramfs reports whether / is the kernel's initramfs (rootfs is a
// ramfs or a tmpfs).
func isInitramfs() bool {
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return false
	}
	return int64(st.Type) == unix.RAMFS_MAGIC || int64(st.Type) == unix.TMPFS_MAGIC
}

// reopenConsole points each closed fd of 0, 1 and 2 at /dev/console.
func reopenConsole() error {
	var closed []int
	for fd := 0; fd <= 2; fd++ {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			closed = append(closed, fd)
		}
	}
	if len(closed) == 0 {
		return nil
	}
	// The open itself takes the lowest free fd, which is one of the closed
	// ones: dup it onto the others and keep it.
	fd, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return fmt.Errorf("open /dev/console for fds %v: %w", closed, err)
	}
	for _, want := range closed {
		if want == fd {
			continue
		}
		if err := unix.Dup3(fd, want, 0); err != nil {
			return fmt.Errorf("dup /dev/console to fd %d: %w", want, err)
		}
	}
	if fd > 2 {
		unix.Close(fd)
	}
	return nil
}

// devLinks makes the /dev symlinks a devtmpfs lacks and shells expect
// (process substitution uses /dev/fd).
func devLinks() error {
	var errs []error
	for name, target := range map[string]string{
		"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2",
	} {
		if err := os.Symlink(target, name); err != nil && !errors.Is(err, os.ErrExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// enableControllers turns on controllers for root's children, one by one so
// that one the kernel lacks does not block the others.
func enableControllers(root string, names ...string) error {
	avail, err := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
	if err != nil {
		return fmt.Errorf("read cgroup controllers: %w", err)
	}
	have := strings.Fields(string(avail))
	var errs []error
	for _, c := range names {
		found := false
		for _, h := range have {
			found = found || h == c
		}
		if !found {
			errs = append(errs, fmt.Errorf("cgroup controller %s not available", c))
			continue
		}
		if err := os.WriteFile(filepath.Join(root, "cgroup.subtree_control"), []byte("+"+c), 0); err != nil {
			errs = append(errs, fmt.Errorf("enable cgroup controller %s: %w", c, err))
		}
	}
	return errors.Join(errs...)
}

// setHostname sets name (or keeps the kernel's, "(none)" becoming
// "sandbox") and makes it resolve through /etc/hosts.
func setHostname(name string) error {
	if name == "" {
		cur, err := os.Hostname()
		if err != nil || cur == "" || cur == "(none)" {
			name = "sandbox"
		} else {
			name = cur
		}
	}
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("sethostname %q: %w", name, err)
	}
	return ensureHosts("/etc/hosts", name)
}

// ensureHosts adds localhost and name to an /etc/hosts that lacks them.
func ensureHosts(path, name string) error {
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	has := func(host string) bool {
		for _, line := range strings.Split(string(data), "\n") {
			if i := strings.IndexByte(line, '#'); i >= 0 {
				line = line[:i]
			}
			f := strings.Fields(line)
			for _, h := range f[min(1, len(f)):] {
				if h == host {
					return true
				}
			}
		}
		return false
	}
	var add strings.Builder
	if !has("localhost") {
		add.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	}
	if !has(name) {
		fmt.Fprintf(&add, "127.0.1.1\t%s\n", name)
	}
	if add.Len() == 0 {
		return nil
	}
	if len(data) > 0 && !strings.HasSuffix(string(data), "\n") {
		data = append(data, '\n')
	}
	if err := os.WriteFile(path, append(data, add.String()...), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// writeResolvConf writes a nameserver line when /etc/resolv.conf is
// missing or empty; one the image or the host put there is kept.
func writeResolvConf(dns string) error {
	const path = "/etc/resolv.conf"
	if st, err := os.Stat(path); err == nil && st.Size() > 0 {
		return nil
	}
	if dns == "" {
		return nil
	}
	// A dangling symlink (systemd-resolved's stub in an image without it)
	// is replaced.
	_ = os.Remove(path)
	if err := os.WriteFile(path, []byte("nameserver "+dns+"\n"), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// switchRoot mounts the root= device, moves /dev onto it, frees the
// initramfs and execs the real root's envd-init with the same arguments.
// It returns only on a failure before the initramfs is freed (PID 1 then
// stays in it); after that, a failure powers the machine off.
func (s *System) switchRoot() error {
	p := s.params
	dev := p.Root
	if !strings.HasPrefix(dev, "/dev/") {
		return fmt.Errorf("root=%s: only /dev/ paths are supported", dev)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(dev); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("root device %s did not appear within 10 s", dev)
		}
		time.Sleep(20 * time.Millisecond)
	}
	const newRoot = "/newroot"
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return fmt.Errorf("mkdir %s: %w", newRoot, err)
	}
	var flags uintptr
	if !p.RootRW {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(dev, newRoot, p.RootFSType, flags, ""); err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", dev, p.RootFSType, newRoot, err)
	}
	// Past freeInitramfs there is no way back: make sure the exec can work
	// while staying in the initramfs still can.
	if err := checkExecutable(newRoot, p.Init); err != nil {
		_ = unix.Unmount(newRoot, 0)
		return fmt.Errorf("no usable init in the root filesystem: %w", err)
	}
	// /dev keeps the console fds' device; /proc and /sys are unmounted so
	// that the next envd-init sees a fresh system and does the bring-up.
	if err := unix.Mount("/dev", filepath.Join(newRoot, "dev"), "", unix.MS_MOVE, ""); err != nil {
		s.log.Warn("cannot move /dev into the root; the next stage mounts its own")
		_ = unix.Unmount("/dev", unix.MNT_DETACH)
	}
	_ = unix.Unmount("/sys", unix.MNT_DETACH)
	_ = unix.Unmount("/proc", unix.MNT_DETACH)
	freeInitramfs(newRoot)
	// The initramfs is gone: PID 1 must not carry on in what is left.
	if err := enterRoot(newRoot); err != nil {
		s.powerOffAfterSwitch(err)
	}
	s.log.Info("switching to the root filesystem", zap.String("root", dev), zap.String("init", p.Init))
	_ = s.log.Sync()
	argv := append([]string{p.Init}, os.Args[1:]...)
	err := unix.Exec(p.Init, argv, os.Environ())
	s.powerOffAfterSwitch(fmt.Errorf("exec %s: %w", p.Init, err))
	return nil // not reached
}

// enterRoot makes newRoot the root (the switch_root dance).
func enterRoot(newRoot string) error {
	if err := os.Chdir(newRoot); err != nil {
		return fmt.Errorf("chdir %s: %w", newRoot, err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move the root onto /: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := os.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	return nil
}

// powerOffAfterSwitch ends a switch that failed after the initramfs was
// freed: neither it nor the root can run envd (no /proc, no /sys, no
// bring-up), and a PID 1 that returns panics the kernel; a power-off
// tells the host at once. It never returns.
func (s *System) powerOffAfterSwitch(err error) {
	s.log.Error("switch to the root filesystem failed after the initramfs was freed; powering off", zap.Error(err))
	_ = s.log.Sync()
	unix.Sync()
	rerr := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	s.log.Error("reboot(2) failed; halting here", zap.Error(rerr))
	_ = s.log.Sync()
	select {}
}

// freeInitramfs deletes the initramfs' files (its memory is not given back
// otherwise), staying on its own filesystem.
func freeInitramfs(keep string) {
	var root unix.Stat_t
	if unix.Stat("/", &root) != nil {
		return
	}
	ents, err := os.ReadDir("/")
	if err != nil {
		return
	}
	for _, e := range ents {
		p := "/" + e.Name()
		if p == keep {
			continue
		}
		var st unix.Stat_t
		if unix.Lstat(p, &st) != nil || st.Dev != root.Dev {
			continue
		}
		_ = os.RemoveAll(p)
	}
}
