// Package carry (runs in envd-init and in the plugins that hand state over:
// envd-fs) moves fds from a plugin being hot-swapped to its replacement.
// The control API's Handover answer carries the plugin's state as bytes;
// fds cannot travel in gRPC, so the plugin sends them beforehand over its
// carry socket, a SOCK_SEQPACKET pair envd-init makes for each plugin start
// (inherited, named by $ENVD_CARRY_FD). envd-init holds them and passes them
// to the replacement as inherited fds ($ENVD_CARRIED_FDS, in order), then
// pushes the state with TakeOver.
//
// envd-fs carries its inotify instances this way: the kernel queue of a
// carried instance is never closed, so no event is lost between the old
// process's last read and the new one's first.
package carry

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/envd-project/envd/plugins/pluginkit/fdvault"
)

// EnvFD names the fd of a plugin's carry socket; EnvCarried lists the fds
// a plugin inherited from its predecessor.
const (
	EnvFD      = "ENVD_CARRY_FD"
	EnvCarried = "ENVD_CARRIED_FDS"
)

// perMessage is how many fds one message carries (SCM_MAX_FD is 253).
const perMessage = 64

// Pair makes a socket pair: envd-init's end and the one the plugin inherits.
func Pair() (ours, theirs *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("carry: socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "carry"), os.NewFile(uintptr(fds[1]), "carry-peer"), nil
}

// FromEnv returns the plugin's carry socket, or nil when it has none.
func FromEnv() *os.File {
	n, err := strconv.Atoi(os.Getenv(EnvFD))
	if err != nil || n < 3 {
		return nil
	}
	unix.CloseOnExec(n)
	return os.NewFile(uintptr(n), "carry")
}

// Inherited returns the fds handed over by the predecessor, in order, and
// forgets the variable (nothing this process starts inherits them).
func Inherited() []*os.File {
	v := os.Getenv(EnvCarried)
	_ = os.Unsetenv(EnvCarried)
	if v == "" {
		return nil
	}
	var files []*os.File
	for _, s := range strings.Split(v, ",") {
		n, err := strconv.Atoi(s)
		if err != nil || n < 3 {
			continue
		}
		unix.CloseOnExec(n)
		files = append(files, os.NewFile(uintptr(n), "carried"))
	}
	return files
}

// Dup duplicates files (close-on-exec), leaving their mode alone.
func Dup(files []*os.File) ([]*os.File, error) {
	out, err := fdvault.Dup(files)
	if err != nil {
		return nil, fmt.Errorf("carry: %w", err)
	}
	return out, nil
}

// Send writes fds to the socket, in order, perMessage at a time. The
// messages are queued by the kernel when it returns (the socket buffer
// holds far more than a few messages of 4 bytes), so the sender may answer
// its Handover call right after.
func Send(sock *os.File, fds []int) error {
	raw, err := sock.SyscallConn()
	if err != nil {
		return fmt.Errorf("carry: %w", err)
	}
	for len(fds) > 0 {
		n := min(len(fds), perMessage)
		var hdr [4]byte
		binary.LittleEndian.PutUint32(hdr[:], uint32(n))
		var serr error
		cerr := raw.Control(func(s uintptr) {
			serr = unix.Sendmsg(int(s), hdr[:], unix.UnixRights(fds[:n]...), nil, 0)
		})
		if cerr != nil {
			return fmt.Errorf("carry: %w", cerr)
		}
		if serr != nil {
			return fmt.Errorf("carry: sendmsg: %w", serr)
		}
		fds = fds[n:]
	}
	return nil
}

// errPeerGone: the sender closed its end (the plugin died, or exited
// after announcing more fds than it sent).
var errPeerGone = errors.New("carry: the sender closed its socket")

// Recv reads n fds sent with Send (close-on-exec), waiting at most wait. It
// blocks in poll while the sender is there and returns at once when it is
// gone, so envd-init (PID 1) never spins on a dead plugin's socket.
func Recv(sock *os.File, n int, wait time.Duration) ([]*os.File, error) {
	var files []*os.File
	fail := func(err error) ([]*os.File, error) {
		for _, f := range files {
			f.Close()
		}
		return nil, err
	}
	raw, err := sock.SyscallConn()
	if err != nil {
		return fail(fmt.Errorf("carry: %w", err))
	}
	deadline := time.Now().Add(wait)
	for len(files) < n {
		left := time.Until(deadline)
		if left <= 0 {
			return fail(fmt.Errorf("carry: %d of %d fds arrived in %v", len(files), n, wait))
		}
		var got []int
		var rerr error
		cerr := raw.Control(func(s uintptr) {
			pfd := []unix.PollFd{{Fd: int32(s), Events: unix.POLLIN}}
			if _, err := unix.Poll(pfd, int(left.Milliseconds())+1); err != nil {
				if !errors.Is(err, unix.EINTR) {
					rerr = fmt.Errorf("carry: poll: %w", err)
				}
				return
			}
			ev := pfd[0].Revents
			if ev == 0 {
				return // timed out: the loop checks the deadline
			}
			if ev&unix.POLLIN == 0 {
				// POLLHUP, POLLERR or POLLNVAL without data: nothing more
				// will come, and poll would return at once forever.
				rerr = fmt.Errorf("%w (poll events %#x)", errPeerGone, ev)
				return
			}
			var hdr [4]byte
			oob := make([]byte, unix.CmsgSpace(perMessage*4))
			m, oobn, flags, _, err := unix.Recvmsg(int(s), hdr[:], oob, unix.MSG_CMSG_CLOEXEC|unix.MSG_DONTWAIT)
			if err != nil {
				if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
					rerr = fmt.Errorf("carry: recvmsg: %w", err)
				}
				return
			}
			if m == 0 && oobn == 0 {
				// End of file: every message Send writes has a header.
				rerr = errPeerGone
				return
			}
			cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
			if err != nil {
				rerr = fmt.Errorf("carry: control message: %w", err)
				return
			}
			for _, cm := range cmsgs {
				if fds, err := unix.ParseUnixRights(&cm); err == nil {
					got = append(got, fds...)
				}
			}
			if flags&unix.MSG_CTRUNC != 0 {
				rerr = errors.New("carry: fds truncated")
			}
		})
		for _, fd := range got {
			files = append(files, os.NewFile(uintptr(fd), "carried"))
		}
		if cerr != nil {
			return fail(fmt.Errorf("carry: %w", cerr))
		}
		if rerr != nil {
			if errors.Is(rerr, errPeerGone) {
				rerr = fmt.Errorf("%w: %d of %d fds arrived", rerr, len(files), n)
			}
			return fail(rerr)
		}
	}
	if len(files) != n {
		return fail(fmt.Errorf("carry: %d fds arrived, %d announced", len(files), n))
	}
	return files, nil
}
