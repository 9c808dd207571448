// Package sysinit is what envd-init does as the init of a VM, before and
// after it serves: the mounts, kernel modules, hostname, network, console and
// environment a shell init script would otherwise set up in front of it, and
// a clean poweroff or reboot at the end. It runs in envd-init only, and only
// when envd-init is PID 1 of a real system (not of a PID namespace whose
// /proc is already mounted) or when --sysinit=on says so.
//
// Every step that fails is logged and the rest goes on: a VM with a missing
// cgroup controller or a read-only /etc must still serve. PID 1 never exits;
// Finish ends in reboot(2).
package sysinit

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Mode is the --sysinit flag.
type Mode string

const (
	// Auto runs the bring-up when envd-init is PID 1 and /proc is not yet
	// mounted: a real boot, not a PID namespace made with --mount-proc.
	Auto Mode = "auto"
	// On always runs it (a VM init whose kernel or initramfs mounted /proc).
	On Mode = "on"
	// Off never runs it.
	Off Mode = "off"
)

// ParseMode checks a --sysinit value.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case Auto, On, Off:
		return m, nil
	}
	return "", fmt.Errorf("--sysinit must be auto, on or off, not %q", s)
}

// Action is how the machine goes down.
type Action int

const (
	// PowerOff halts and powers off (the VM's process exits).
	PowerOff Action = iota
	// Reboot restarts the machine.
	Reboot
)

func (a Action) String() string {
	if a == Reboot {
		return "reboot"
	}
	return "poweroff"
}

// StandardPath is the PATH children get when the kernel gave init none.
const StandardPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// System is a running bring-up; nil means envd-init is not the system's
// init, and every method of a nil *System does nothing.
type System struct {
	log    *zap.Logger
	params Params
	// early holds what went wrong before a logger existed.
	early  []error
	action atomic.Int32
}

// Start decides whether envd-init is the system's init and, if so, does
// what must come before anything opens a file: devtmpfs on /dev and fds 0-2
// on /dev/console (a kernel that found no /dev/console in the root starts
// init with them closed, and the next open would silently become stderr).
func Start(mode Mode) *System {
	switch mode {
	case Off:
		return nil
	case Auto:
		if os.Getpid() != 1 || isMounted("/proc", unix.PROC_SUPER_MAGIC) {
			return nil
		}
	}
	s := &System{log: zap.NewNop()}
	if err := mountFS("devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", unix.TMPFS_MAGIC); err != nil {
		s.early = append(s.early, err)
	}
	if err := reopenConsole(); err != nil {
		s.early = append(s.early, err)
	}
	return s
}

// Active reports whether envd-init is the system's init.
func (s *System) Active() bool { return s != nil }

// BringUp does the rest of the system's start. From an initramfs with a
// root= on the command line it mounts that root and execs its envd-init
// (and returns only if that fails).
func (s *System) BringUp(log *zap.Logger) {
	if s == nil {
		return
	}
	s.log = log
	start := time.Now()
	for _, err := range s.early {
		log.Error("early bring-up step failed", zap.Error(err))
	}
	s.step("mount /proc", func() error {
		return mountFS("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "", unix.PROC_SUPER_MAGIC)
	})
	s.step("mount /sys", func() error {
		return mountFS("sysfs", "/sys", "sysfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "", unix.SYSFS_MAGIC)
	})
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		log.Error("cannot read the kernel command line; using defaults", zap.Error(err))
	}
	params, errs := ParseCmdline(string(cmdline))
	for _, err := range errs {
		log.Error("bad kernel command line parameter, default kept", zap.Error(err))
	}
	s.params = params

	if params.Root != "" && isInitramfs() {
		s.step("kernel modules", s.loadModules)
		s.step("switch to the root filesystem", s.switchRoot)
		log.Error("staying in the initramfs")
	}

	s.step("mount /dev/pts", func() error {
		return mountFS("devpts", "/dev/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666", unix.DEVPTS_SUPER_MAGIC)
	})
	s.step("mount /dev/shm", func() error {
		return mountFS("tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777", unix.TMPFS_MAGIC)
	})
	s.step("mount /run", func() error {
		return mountFS("tmpfs", "/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755", unix.TMPFS_MAGIC)
	})
	s.step("mount /tmp", func() error {
		return mountFS("tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777", unix.TMPFS_MAGIC)
	})
	s.step("mount /sys/fs/cgroup", func() error {
		if err := mountFS("cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "", unix.CGROUP2_SUPER_MAGIC); err != nil {
			return err
		}
		return enableControllers("/sys/fs/cgroup", "cpu", "memory", "io")
	})
	s.step("/dev links", devLinks)
	// Ctrl-Alt-Del (Firecracker's SendCtrlAltDel) then reaches us as SIGINT
	// and goes through the clean shutdown instead of an instant reset.
	s.step("ctrl-alt-del to init", func() error { return unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF) })
	s.step("kernel modules", s.loadModules)
	s.step("hostname", func() error { return setHostname(params.Hostname) })
	s.step("loopback", LoopbackUp)
	if params.Net {
		s.step("network "+params.Iface, func() error {
			changed, err := ConfigureInterface(params.Iface, params.Addr, params.Gateway, 5*time.Second)
			if err == nil && !changed {
				log.Info("interface already has an address, left as is", zap.String("iface", params.Iface))
			}
			return err
		})
	}
	s.step("resolv.conf", func() error { return writeResolvConf(params.DNS) })
	if os.Getenv("PATH") == "" {
		s.step("PATH", func() error { return os.Setenv("PATH", StandardPath) })
	}
	log.Info("system up", zap.Duration("took", time.Since(start)))
}

// step runs one bring-up step; a failure is logged and the next goes on.
func (s *System) step(name string, fn func() error) {
	t := time.Now()
	if err := fn(); err != nil {
		s.log.Error("bring-up step failed", zap.String("step", name), zap.Error(err))
		return
	}
	s.log.Debug("bring-up step done", zap.String("step", name), zap.Duration("took", time.Since(t)))
}

func (s *System) loadModules() error {
	if len(s.params.Modules) == 0 {
		return nil
	}
	rel, err := kernelRelease()
	if err != nil {
		return err
	}
	dir := filepath.Join("/lib/modules", rel)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		s.log.Info("no modules for this kernel; drivers must be built in", zap.String("dir", dir))
		return nil
	}
	idx, err := IndexModules(dir)
	if err != nil {
		return err
	}
	order, missing, orderErr := idx.Order(s.params.Modules)
	if len(missing) > 0 {
		s.log.Debug("modules not in the tree (built in or absent)", zap.Strings("modules", missing))
	}
	var errs []error
	var loaded []string
	for _, m := range order {
		p, _ := idx.Path(m)
		ok, err := LoadModule(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ok {
			loaded = append(loaded, m)
		}
	}
	s.log.Info("kernel modules loaded", zap.Strings("modules", loaded))
	return errors.Join(append(errs, orderErr)...)
}

// Signals are the ones, besides SIGTERM and SIGINT, that ask the init to go
// down. busybox's halt, poweroff and reboot send SIGUSR1, SIGUSR2 and
// SIGTERM to PID 1; SIGINT is Ctrl-Alt-Del. A VM has nothing to halt to, so
// halt powers off too.
func (s *System) Signals() []os.Signal {
	if s == nil {
		return nil
	}
	return []os.Signal{syscall.SIGUSR1, syscall.SIGUSR2}
}

// Requested records how the machine is to go down after the stop that the
// signal sig starts.
func (s *System) Requested(sig os.Signal) {
	if s == nil {
		return
	}
	a := Reboot
	if sig == syscall.SIGUSR1 || sig == syscall.SIGUSR2 {
		a = PowerOff
	}
	s.action.Store(int32(a))
}

// Finish is the end of PID 1: envd's own stop is done (plugins and their
// user processes are ended); it ends every other process, syncs, unmounts
// and calls reboot(2). After a failed start (err) it first waits for a
// shutdown signal, so the console stays readable. As PID 1 it never
// returns.
func (s *System) Finish(err error) {
	if s == nil {
		return
	}
	if err != nil {
		wait := make(chan os.Signal, 1)
		signal.Notify(wait, append(s.Signals(), syscall.SIGTERM, syscall.SIGINT)...)
		s.log.Error("envd-init cannot serve; waiting for a shutdown signal (PID 1 does not exit)", zap.Error(err))
		s.Requested(<-wait)
	}
	s.shutdown(Action(s.action.Load()))
}

func (s *System) shutdown(a Action) {
	if os.Getpid() != 1 {
		// --sysinit=on outside PID 1: killing every process and rebooting
		// are the machine's init's job, not ours.
		s.log.Info("not PID 1: leaving the poweroff to the system's init", zap.Stringer("action", a))
		return
	}
	s.log.Info("system going down", zap.Stringer("action", a))
	_ = s.log.Sync()
	killAll(s.log, 3*time.Second)
	unix.Sync()
	unmountAll(s.log)
	unix.Sync()
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	if a == Reboot {
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	}
	err := unix.Reboot(cmd)
	s.log.Error("reboot(2) failed; halting here", zap.Stringer("action", a), zap.Error(err))
	_ = s.log.Sync()
	select {}
}

// killAll sends SIGTERM to every process but PID 1, waits up to grace for
// them to go, then SIGKILLs what is left. envd-init's reaper reaps them.
func killAll(log *zap.Logger, grace time.Duration) {
	if n := userProcesses(); n == 0 {
		return
	}
	_ = unix.Kill(-1, unix.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) && userProcesses() > 0 {
		time.Sleep(50 * time.Millisecond)
	}
	if n := userProcesses(); n > 0 {
		log.Warn("processes ignored SIGTERM; killing them", zap.Int("count", n))
		_ = unix.Kill(-1, unix.SIGKILL)
		deadline = time.Now().Add(time.Second)
		for time.Now().Before(deadline) && userProcesses() > 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// userProcesses counts live processes other than this one. Kernel threads
// and zombies have an empty cmdline and are not counted.
func userProcesses() int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	self := os.Getpid()
	n := 0
	for _, e := range ents {
		pid := 0
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == self || pid <= 0 {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && len(b) > 0 {
			n++
		}
	}
	return n
}

// unmountAll unmounts everything but / in reverse mount order, then
// remounts / read-only so the journal is clean.
func unmountAll(log *zap.Logger) {
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		log.Error("cannot list mounts", zap.Error(err))
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		f := strings.Fields(lines[i])
		if len(f) < 2 || f[1] == "/" {
			continue
		}
		target := unescapeMount(f[1])
		if err := unix.Unmount(target, 0); err != nil {
			// Busy (a console fd on /dev, our own executable's mount):
			// detach so the remount below can still succeed.
			if err2 := unix.Unmount(target, unix.MNT_DETACH); err2 != nil && !errors.Is(err2, unix.EINVAL) {
				log.Debug("cannot unmount", zap.String("target", target), zap.Error(err))
			}
		}
	}
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		log.Warn("cannot remount / read-only", zap.Error(err))
	}
}

// unescapeMount undoes the octal escapes of /proc/self/mounts (\040 for a
// space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
