package app

import (
	"fmt"
	"math"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// closeInheritedOnExec marks every fd above stderr close-on-exec. envd-init
// starts with whatever its launcher left open (an init script's pipes, a
// terminal, a debugger's socket, a test harness's file); Go opens its own
// fds close-on-exec, but inherited ones would pass on to every plugin and,
// through envd-proc, to every user process. It runs first in Main, before
// anything is started.
func closeInheritedOnExec() error {
	if err := unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC); err == nil {
		return nil
	}
	// Kernels before 5.11: walk the fd table.
	fds, err := openFDs()
	if err != nil {
		return err
	}
	for _, fd := range fds {
		if fd > 2 {
			// EBADF: the fd that listed the directory, closed meanwhile.
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && err != unix.EBADF {
				return fmt.Errorf("marking fd %d close-on-exec: %w", fd, err)
			}
		}
	}
	return nil
}

// openFDs lists the open fds from /proc, or, as PID 1 before /proc is
// mounted, by probing every number below the fd limit.
func openFDs() ([]int, error) {
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		var fds []int
		for _, e := range ents {
			if fd, err := strconv.Atoi(e.Name()); err == nil {
				fds = append(fds, fd)
			}
		}
		return fds, nil
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return nil, fmt.Errorf("fd limit: %w", err)
	}
	n := min(lim.Cur, 1<<20)
	var fds []int
	for fd := 3; uint64(fd) < n; fd++ {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
			fds = append(fds, fd)
		}
	}
	return fds, nil
}
