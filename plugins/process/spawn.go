package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"connectrpc.com/connect"
	"github.com/creack/pty"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/internal/cgroups"
	"github.com/envd-project/envd/internal/paths"
	"github.com/envd-project/envd/internal/users"
	"github.com/envd-project/envd/plugins/pluginkit/callinfo"
	"github.com/envd-project/envd/plugins/process/fanout"
)

// SystemTag keeps a process in envd's own cgroup (WIRE §5.1 step 7).
const SystemTag = "_system"

// fallbackPATH is used only when envd itself runs without PATH (possible
// as PID 1's child), since "PATH=" would make every command unfindable.
const fallbackPATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// wrapperScript raises the child's OOM score (so the kernel picks user
// processes before envd), then execs the priority helpers and the command
// given as positional parameters: no shell ever interprets cmd (WIRE §5.1
// step 4). A failed oom write (unlikely) must not stop the command.
const wrapperScript = `{ echo 100 >/proc/self/oom_score_adj; } 2>/dev/null; exec "$@"`

// wrapper builds the /bin/sh command line for a process.
type wrapper struct {
	// prefix is prepended to cmd: ionice and nice with their arguments,
	// each only if it is found in envd's PATH and actually changes
	// something.
	prefix []string
}

func newWrapper(lookPath func(string) (string, error)) wrapper {
	var w wrapper
	if ioniceNeeded() {
		if p, err := lookPath("ionice"); err == nil {
			w.prefix = append(w.prefix, p, "-c", "2", "-n", "4")
		}
	}
	if d := -ownNice(); d != 0 {
		if p, err := lookPath("nice"); err == nil {
			w.prefix = append(w.prefix, p, "-n", strconv.Itoa(d))
		}
	}
	return w
}

// argv is the full argument vector of /bin/sh for cmd and args.
func (w wrapper) argv(cmd string, args []string) []string {
	argv := make([]string, 0, 4+len(w.prefix)+1+len(args))
	argv = append(argv, "/bin/sh", "-c", wrapperScript, "sh")
	argv = append(argv, w.prefix...)
	argv = append(argv, cmd)
	return append(argv, args...)
}

// ownNice is envd's nice value (the raw getpriority result is 20 - nice).
func ownNice() int {
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		return 0
	}
	return 20 - prio
}

// ioniceNeeded reports whether a child would inherit an I/O priority other
// than best-effort level 4. With class "none" the kernel derives the level
// from the nice value, which the wrapper resets to 0, giving exactly that.
func ioniceNeeded() bool {
	const (
		whoProcess = 1
		classShift = 13
		classBE    = 2
	)
	r, _, errno := unix.Syscall(unix.SYS_IOPRIO_GET, whoProcess, 0, 0)
	if errno != 0 {
		return true
	}
	class, level := int(r)>>classShift, int(r)&(1<<classShift-1)
	return class != 0 && (class != classBE || level != 4)
}

// userCommand is cmd and args for messages and logs.
func userCommand(cfg *procpb.ProcessConfig) string {
	return strings.Join(append([]string{cfg.GetCmd()}, cfg.GetArgs()...), " ")
}

// environ builds the child's environment (WIRE §5.1 step 6); os/exec
// keeps the last value of a duplicated key, so later sources win.
func (s *Service) environ(u *users.User, envs map[string]string) []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = fallbackPATH
	}
	defs := s.defs.Get().GetEnvVars()
	env := make([]string, 0, 4+len(defs)+len(envs))
	env = append(env, "PATH="+path, "HOME="+u.Home, "USER="+u.Name, "LOGNAME="+u.Name)
	for k, v := range defs {
		env = append(env, k+"="+v)
	}
	for k, v := range envs {
		env = append(env, k+"="+v)
	}
	return env
}

// lookupUser resolves the caller's user (WIRE §4.2).
func (s *Service) lookupUser(ctx context.Context) (*users.User, error) {
	name := s.defs.User(callinfo.From(ctx).User)
	u, err := s.db.Lookup(name)
	if errors.Is(err, users.ErrUnknownUser) {
		return nil, connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("invalid username: '%s'", name))
	}
	if err != nil {
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("looking up user %q: %w", name, err))
	}
	return u, nil
}

// workdir resolves the request's cwd (WIRE §5.1 step 3).
func (s *Service) workdir(cwd string, u *users.User) (string, error) {
	dir, err := paths.Resolve(cwd, u.Home, s.defs.Get().GetDefaultWorkdir())
	if err != nil {
		// The message as WIRE §6.1 words it, no prefix.
		return "", connect.NewError(connect.CodeInvalidArgument, err)
	}
	if dir == "" {
		dir = u.Home
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("cwd '%s' does not exist", dir))
	}
	return dir, nil
}

// credential runs the child as u with its supplementary groups. When
// envd itself is not root (tests, debugging) and u is envd's own user,
// no credential change is needed and setgroups would be refused.
func credential(u *users.User) *syscall.Credential {
	if euid := os.Geteuid(); euid != 0 && uint32(euid) == u.UID {
		return nil
	}
	return &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: u.Groups}
}

func cgroupKind(req *procpb.StartRequest) cgroups.Kind {
	switch {
	case req.GetTag() == SystemTag:
		return cgroups.System
	case req.GetPty() != nil:
		return cgroups.PTY
	default:
		return cgroups.User
	}
}

// childIO holds both ends of the process's stdio while it starts: theirs
// go to the child and are closed after the fork; ours stay in the record.
type childIO struct {
	stdin, stdout, stderr *os.File // the child's ends
	master                *os.File
	stdinW, outR, errR    *os.File
}

func (c *childIO) closeTheirs() {
	for _, f := range []*os.File{c.stdin, c.stdout, c.stderr} {
		if f != nil {
			_ = f.Close()
		}
	}
}

func (c *childIO) closeOurs() {
	for _, f := range []*os.File{c.master, c.stdinW, c.outR, c.errR} {
		if f != nil {
			_ = f.Close()
		}
	}
}

// openPTY allocates a terminal of the given size. creack/pty hands the
// master back in blocking mode (its ioctls go through Fd), so the master
// is re-opened as a non-blocking close-on-exec duplicate: reads then sit
// in the netpoller, honour deadlines and are interrupted by Close.
func openPTY(cols, rows uint32) (master, slave *os.File, err error) {
	m, sl, err := pty.Open()
	if err != nil {
		return nil, nil, err
	}
	fd, err := unix.FcntlInt(m.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	_ = m.Close()
	if err != nil {
		_ = sl.Close()
		return nil, nil, fmt.Errorf("duplicating pty master: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		_ = sl.Close()
		return nil, nil, fmt.Errorf("pty master non-blocking: %w", err)
	}
	master = os.NewFile(uintptr(fd), "/dev/ptmx")
	if err := setWinsize(master, cols, rows); err != nil {
		_ = master.Close()
		_ = sl.Close()
		return nil, nil, fmt.Errorf("setting pty size: %w", err)
	}
	return master, sl, nil
}

func (s *Service) openIO(req *procpb.StartRequest) (*childIO, error) {
	cio := &childIO{}
	if p := req.GetPty(); p != nil {
		m, sl, err := openPTY(p.GetSize().GetCols(), p.GetSize().GetRows())
		if err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(
				"error starting pty with command '%s' with '%d' cols and '%d' rows: %w",
				userCommand(req.GetProcess()), p.GetSize().GetCols(), p.GetSize().GetRows(), err))
		}
		cio.master, cio.stdin, cio.stdout, cio.stderr = m, sl, sl, sl
		return cio, nil
	}
	var err error
	if cio.outR, cio.stdout, err = os.Pipe(); err != nil {
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("error creating stdout pipe for command '%s': %w", userCommand(req.GetProcess()), err))
	}
	if cio.errR, cio.stderr, err = os.Pipe(); err != nil {
		cio.closeTheirs()
		cio.closeOurs()
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("error creating stderr pipe for command '%s': %w", userCommand(req.GetProcess()), err))
	}
	// Absent means true: clients older than the flag expect a stdin pipe.
	if req.Stdin == nil || req.GetStdin() {
		if cio.stdin, cio.stdinW, err = os.Pipe(); err != nil {
			cio.closeTheirs()
			cio.closeOurs()
			return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("error creating stdin pipe for command '%s': %w", userCommand(req.GetProcess()), err))
		}
	}
	return cio, nil
}

// spawn starts the process of a Start request and returns its record with
// a subscription taken before the child ran, so no output is missed.
func (s *Service) spawn(ctx context.Context, req *procpb.StartRequest) (*proc, *fanout.Sub[*procpb.ProcessEvent], error) {
	u, err := s.lookupUser(ctx)
	if err != nil {
		return nil, nil, err
	}
	cfg := req.GetProcess()
	dir, err := s.workdir(cfg.GetCwd(), u)
	if err != nil {
		return nil, nil, err
	}
	chio, err := s.openIO(req)
	if err != nil {
		return nil, nil, err
	}

	attr := &syscall.SysProcAttr{Credential: credential(u)}
	if chio.master != nil {
		// New session with the slave (the child's fd 0) as controlling tty.
		attr.Setsid, attr.Setctty, attr.Ctty = true, true, 0
	} else {
		// Own process group: Shutdown can kill the whole job, and a
		// command's "kill 0" cannot reach envd.
		attr.Setpgid = true
	}
	kind := cgroupKind(req)
	if fd, ok := s.cg.FD(kind); ok {
		attr.UseCgroupFD, attr.CgroupFD = true, fd
	}
	newCmd := func(attr *syscall.SysProcAttr) *exec.Cmd {
		c := &exec.Cmd{
			Path:        "/bin/sh",
			Args:        s.wrap.argv(cfg.GetCmd(), cfg.GetArgs()),
			Env:         s.environ(u, cfg.GetEnvs()),
			Dir:         dir,
			Stdout:      chio.stdout,
			Stderr:      chio.stderr,
			SysProcAttr: attr,
		}
		if chio.stdin != nil { // no Stdin (a nil interface, not a nil *os.File) means /dev/null
			c.Stdin = chio.stdin
		}
		return c
	}

	p := &proc{
		log:     s.log,
		vault:   s.vault,
		config:  proto.CloneOf(cfg),
		hub:     newHub(outputPolicy(chio.master != nil), s.limits),
		master:  chio.master,
		stdout:  chio.outR,
		stderr:  chio.errR,
		stdin:   chio.stdinW,
		stopOut: make(chan struct{}),
		cutOut:  make(chan struct{}),
		outDone: make(chan struct{}),

		handedOver: make(chan struct{}),
	}
	if p.config == nil {
		p.config = &procpb.ProcessConfig{}
	}
	if req.Tag != nil {
		t := req.GetTag()
		p.tag = &t
	}
	sub := p.hub.Subscribe()

	if !s.beginLifecycle() {
		chio.closeTheirs()
		chio.closeOurs()
		return nil, nil, s.errShuttingDown()
	}
	cmd := newCmd(attr)
	err = cmd.Start()
	if err != nil && attr.UseCgroupFD {
		// Keep working without cgroups rather than fail the command (WIRE §9.5).
		s.log.Warn("start with a cgroup fd failed; retrying without the cgroup", zap.Int("kind", int(kind)), zap.Error(err))
		noCg := *attr
		noCg.UseCgroupFD, noCg.CgroupFD = false, 0
		cmd = newCmd(&noCg)
		err = cmd.Start()
	}
	chio.closeTheirs()
	if err != nil {
		chio.closeOurs()
		s.running.Done()
		return nil, nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("error starting process '%s': %w", userCommand(cfg), err))
	}

	p.pid = uint32(cmd.Process.Pid)
	p.child = forkedChild{cmd: cmd}
	p.log = s.log.With(zap.Uint32("pid", p.pid))
	deadline, hasDeadline := ctx.Deadline()
	if hasDeadline {
		p.armDeadline(deadline)
	}
	registered := s.register(p)
	if registered {
		// Before anything can close the fds being deposited.
		s.deposit(p, cmd.Process.Pid)
	}
	p.startPumps()
	go s.lifecycle(p)
	if !registered {
		// Shutdown began while this process was starting: it dies with the rest.
		p.killAll()
		p.hub.Unsubscribe(sub)
		return nil, nil, errShuttingDown()
	}
	if ce := p.log.Check(zap.DebugLevel, "process started"); ce != nil {
		ce.Write(zap.String("cmd", userCommand(cfg)), zap.Bool("pty", chio.master != nil), zap.Stringp("tag", p.tag), zap.Bool("has_deadline", hasDeadline), zap.Time("deadline", deadline))
	}
	return p, sub, nil
}

// outputPolicy is what a full subscriber queue costs (package fanout): a
// pipe subscriber is cut off with an error rather than handed an output
// with holes; a terminal subscriber loses the burst but stays attached.
func outputPolicy(pty bool) fanout.Policy {
	if pty {
		return fanout.DropData
	}
	return fanout.DropSubscriber
}

// ErrReplaced is the message of a Start refused by an envd-proc that hands
// over to its replacement (hot-swap): nothing was started, and envd-init
// sends the call to the replacement.
const ErrReplaced = "envd-proc is being replaced"

func (s *Service) errShuttingDown() error {
	select {
	case <-s.handover:
		return connect.NewError(connect.CodeUnavailable, errors.New(ErrReplaced))
	default:
	}
	return errShuttingDown()
}

func errShuttingDown() error {
	return connect.NewError(connect.CodeUnavailable, errors.New("process service is shutting down"))
}
