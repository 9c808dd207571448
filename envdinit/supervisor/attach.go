package supervisor

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// processGone returns a channel closed when process pid ends. It works for a
// process that is not our child (a plugin started by hand, which the reaper
// never sees): a pidfd becomes readable when its process exits.
func processGone(pid int) (<-chan struct{}, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open(%d): %w", pid, err)
	}
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			// Blocks one thread per attached plugin: a debugging setup only.
			_, err := unix.Poll(fds, -1)
			if err == nil || !errors.Is(err, unix.EINTR) {
				return
			}
		}
	}()
	return gone, nil
}
