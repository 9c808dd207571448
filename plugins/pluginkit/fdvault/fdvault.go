// Package fdvault (runs in envd-proc and envd-init) is the wire between envd-proc and envd-init's fd vault
// (docs/architecture.md: user processes survive a plugin crash or swap).
// Both ends use it: envd-proc (Client) deposits, right after each Start, a
// record of the process and duplicates of the fds it holds for it (pidfd,
// PTY master or the pipe ends) over SCM_RIGHTS; envd-init (package
// envdinit/vault) keeps them, so no pipe reader or PTY master disappears
// when envd-proc dies (the user process gets no SIGPIPE or SIGHUP, its
// output waits in the kernel buffer), reaps the orphans and keeps their
// exit status, and hands everything to the next envd-proc (Fetch).
//
// The socket is a SOCK_SEQPACKET pair made by envd-init per plugin start and
// inherited as the fd named by $ENVD_VAULT_FD. A message is one JSON Msg;
// fds travel with it as SCM_RIGHTS.
package fdvault

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// EnvFD names the environment variable holding the vault socket's fd number.
const EnvFD = "ENVD_VAULT_FD"

// MaxMessage bounds one message. A record whose config does not fit is
// deposited without its environment (List then shows it without envs).
const MaxMessage = 64 << 10

// maxFDs is the most fds one message carries (pidfd + stdin/out/err).
const maxFDs = 8

// Operations.
const (
	// OpDeposit (plugin → vault): Rec, with fds [pidfd, master] in PTY mode
	// or [pidfd, stdout, stderr, stdin?] in pipe mode.
	OpDeposit = "deposit"
	// OpExiting (plugin → vault): the process exited with Status and the
	// plugin is about to reap it (or envd-init already did): the vault
	// closes its fds and keeps the status for the retention time. Not
	// acknowledged: sent before the reap, it is in the vault's queue before
	// the pid can name another process, and the vault reads in order.
	OpExiting = "exiting"
	// OpForget (plugin → vault): drop the record of Pid (start Seq) and
	// close its fds, keeping no status: a take-over plugin could not adopt
	// the process and ended it. Not acknowledged, like OpExiting.
	OpForget = "forget"
	// OpSync (plugin → vault, acked): does nothing; its ack says every
	// earlier message was handled.
	OpSync = "sync"
	// OpCloseStdin (plugin → vault, acked): close the vault's stdin copy,
	// so the process sees EOF.
	OpCloseStdin = "closestdin"
	// OpFetch (plugin → vault): the vault answers one OpRecord per kept
	// process, then OpAck. From then on it pushes OpExit to this plugin.
	OpFetch = "fetch"
	// OpRecord (vault → plugin): one kept process, with its fds.
	OpRecord = "record"
	// OpExit (vault → plugin): envd-init reaped Pid with Status.
	OpExit = "exit"
	// OpAck (vault → plugin): request ID is done; Err is set on failure.
	OpAck = "ack"
)

// Record is what the vault keeps of one user process.
type Record struct {
	Pid uint32  `json:"pid"`
	Seq uint64  `json:"seq"`
	Tag *string `json:"tag,omitempty"`
	// Config is the process.ProcessConfig as sent, protobuf-encoded.
	Config []byte `json:"config,omitempty"`
	PTY    bool   `json:"pty,omitempty"`
	// Stdin: the fds include a stdin write end (pipe mode, not closed).
	Stdin bool `json:"stdin,omitempty"`
	// Deadline is the wall-clock kill deadline in Unix nanoseconds; 0: none.
	Deadline int64 `json:"deadline,omitempty"`
	// Reaped: envd-init reaped the process (Status is its wait status);
	// the fds are still there, with whatever output is left.
	Reaped bool `json:"reaped,omitempty"`
	// Released: the plugin said the process ended (OpExiting); there are
	// no fds, only the status, kept for the retention time.
	Released bool  `json:"released,omitempty"`
	Status   int32 `json:"status,omitempty"`
	// Streams is how many client streams envd-init holds open for this
	// process (filled in by the vault on fetch): the next plugin waits for
	// that many re-attachments before it reads the process's output again,
	// so none of them misses a byte.
	Streams int `json:"streams,omitempty"`
}

// Msg is one message on the vault socket.
type Msg struct {
	Op     string `json:"op"`
	ID     uint64 `json:"id,omitempty"`
	Pid    uint32 `json:"pid,omitempty"`
	Status int32  `json:"status,omitempty"`
	// Seq names which start of Pid an OpExiting is about: a pid can be
	// reused while an adopted process's end is still on its way.
	Seq uint64  `json:"seq,omitempty"`
	Rec *Record `json:"rec,omitempty"`
	Err string  `json:"err,omitempty"`
}

// Conn is one end of a vault socket.
type Conn struct {
	c   *net.UnixConn
	buf []byte // Recv's; one reader per Conn
}

// NewConn wraps a connected SOCK_SEQPACKET socket.
func NewConn(f *os.File) (*Conn, error) {
	fc, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("fdvault: socket: %w", err)
	}
	uc, ok := fc.(*net.UnixConn)
	if !ok {
		fc.Close()
		return nil, fmt.Errorf("fdvault: fd is a %T, want a unix socket", fc)
	}
	return &Conn{c: uc}, nil
}

// Pair makes a connected socket pair: ours and the file to hand to a child.
func Pair() (*Conn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("fdvault: socketpair: %w", err)
	}
	for _, fd := range fds {
		// Large enough for one MaxMessage and a queue of deposits.
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4*MaxMessage)
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4*MaxMessage)
	}
	ours := os.NewFile(uintptr(fds[0]), "fdvault")
	c, err := NewConn(ours)
	ours.Close() // FileConn made its own copy
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	return c, os.NewFile(uintptr(fds[1]), "fdvault-peer"), nil
}

// Close closes the socket.
func (c *Conn) Close() error { return c.c.Close() }

// Send writes m with fds. Callers serialise Sends.
func (c *Conn) Send(m *Msg, fds []int) error {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("fdvault: encode %s: %w", m.Op, err)
	}
	if len(b) > MaxMessage {
		return fmt.Errorf("fdvault: %s message of %d bytes is over the %d limit", m.Op, len(b), MaxMessage)
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.c.WriteMsgUnix(b, oob, nil); err != nil {
		return fmt.Errorf("fdvault: send %s: %w", m.Op, err)
	}
	return nil
}

// Recv reads one message and the fds that came with it (close-on-exec).
func (c *Conn) Recv() (*Msg, []*os.File, error) {
	if c.buf == nil {
		c.buf = make([]byte, MaxMessage)
	}
	buf := c.buf
	oob := make([]byte, unix.CmsgSpace(maxFDs*4))
	n, oobn, flags, _, err := c.c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, nil, err
	}
	var files []*os.File
	if oobn > 0 {
		cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return nil, nil, fmt.Errorf("fdvault: control message: %w", err)
		}
		for _, cm := range cmsgs {
			fds, err := unix.ParseUnixRights(&cm)
			if err != nil {
				continue
			}
			for _, fd := range fds {
				unix.CloseOnExec(fd)
				files = append(files, os.NewFile(uintptr(fd), "fdvault-fd"))
			}
		}
	}
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		closeAll()
		return nil, nil, errors.New("fdvault: truncated message")
	}
	if n == 0 {
		closeAll()
		return nil, nil, io.EOF
	}
	var m Msg
	if err := json.Unmarshal(buf[:n], &m); err != nil {
		closeAll()
		return nil, nil, fmt.Errorf("fdvault: decode: %w", err)
	}
	return &m, files, nil
}

// FDs returns the fd numbers of files without touching their mode
// ((*os.File).Fd would switch a pipe to blocking mode, and O_NONBLOCK is
// shared by every duplicate: the reader in envd-proc would then block a
// thread and ignore deadlines).
func FDs(files []*os.File) ([]int, error) {
	fds := make([]int, 0, len(files))
	for _, f := range files {
		rc, err := f.SyscallConn()
		if err != nil {
			return nil, fmt.Errorf("fdvault: %s: %w", f.Name(), err)
		}
		if err := rc.Control(func(fd uintptr) { fds = append(fds, int(fd)) }); err != nil {
			return nil, fmt.Errorf("fdvault: %s: %w", f.Name(), err)
		}
	}
	return fds, nil
}

// Dup duplicates files (close-on-exec, numbered 3 and up), leaving their
// mode alone (see FDs). The vault sends duplicates so that a record's fds
// may be closed while a send of them is still queued.
func Dup(files []*os.File) ([]*os.File, error) {
	out := make([]*os.File, 0, len(files))
	for _, f := range files {
		rc, err := f.SyscallConn()
		if err == nil {
			var fd int
			var derr error
			err = rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 3) })
			if err == nil {
				err = derr
			}
			if err == nil {
				out = append(out, os.NewFile(uintptr(fd), f.Name()))
				continue
			}
		}
		for _, d := range out {
			d.Close()
		}
		return nil, fmt.Errorf("fdvault: dup %s: %w", f.Name(), err)
	}
	return out, nil
}
