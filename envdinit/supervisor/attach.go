package supervisor

import (
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// processGone returns a channel closed when process pid ends. It works for a
// process that is not our child (a plugin started by hand, which the reaper
// never sees): a pidfd becomes readable when its process exits. unwatch
// ends the watch early and releases its thread and fds.
func processGone(pid int) (gone <-chan struct{}, unwatch func(), err error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("pidfd_open(%d): %w", pid, err)
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("pipe: %w", err)
	}
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		defer unix.Close(fd)
		defer unix.Close(p[0])
		// The pipe's write end closing (unwatch) wakes the poll too.
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(p[0]), Events: unix.POLLIN}}
		for {
			// Blocks one thread per attached plugin: a debugging setup only.
			_, err := unix.Poll(fds, -1)
			if err == nil || !errors.Is(err, unix.EINTR) {
				return
			}
		}
	}()
	var once sync.Once
	return ch, func() { once.Do(func() { unix.Close(p[1]) }) }, nil
}
