// Package supervisor starts envd-init's plugins with hashicorp/go-plugin and
// runs in envd-init. It keeps each plugin running (restart with capped
// exponential backoff), holds envd-fs and envd-net back until envd-proc is up,
// pushes the sandbox defaults to each on every start and change, and hands out
// its gRPC connection to the proxy, waiting a bounded time while it is down.
package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"github.com/envd-project/envd/envdinit/reaper"
	"github.com/envd-project/envd/envdinit/state"
	"github.com/envd-project/envd/envdinit/vault"
	controlpb "github.com/envd-project/envd/gen/control"
	"github.com/envd-project/envd/plugins/pluginkit/carry"
	"github.com/envd-project/envd/plugins/pluginkit/contract"
	"github.com/envd-project/envd/plugins/pluginkit/fdvault"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/runner"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
)

// Spec describes one plugin to run.
type Spec struct {
	Name string
	Path string
	Args []string
	// CgroupFD, when >= 0, is the cgroup directory the plugin is spawned
	// into (envd-net relays user traffic, so it lives in the forwarder group).
	CgroupFD int
	// Reattach, when set, is where a plugin started by hand serves
	// (contract.LoadReattach: JSON, or a file holding it): the supervisor
	// attaches to it instead of starting the plugin, and never kills it.
	Reattach string
	// Vault, when set, gives each start of the plugin its own socket to
	// envd-init's fd vault (envd-proc: user processes outlive it).
	Vault *vault.Vault
	// Carry gives each start a carry socket (package carry): in a hot-swap
	// the plugin may hand state and fds to its replacement (envd-fs: its
	// polling watchers).
	Carry bool
}

// Options tune the supervisor.
type Options struct {
	// WaitReady bounds how long an RPC waits for a plugin that is down.
	WaitReady time.Duration
	// MinBackoff and MaxBackoff bound the delay between restarts.
	MinBackoff, MaxBackoff time.Duration
	// StartTimeout bounds one plugin start (exec to handshake and config).
	StartTimeout time.Duration
	// SocketDir holds the plugins' Unix sockets; "" is the system temp dir.
	SocketDir string
	// WatchFiles hot-swaps a plugin whose executable is replaced.
	WatchFiles bool
	// OnWork, when set, is called after each plugin start (first, restart,
	// swap; failed too): envd-init's idle trim counts it as activity, as
	// no request did that work (a restart touches megabytes of code).
	OnWork func()
}

func (o *Options) setDefaults() {
	if o.WaitReady == 0 {
		o.WaitReady = 3 * time.Second
	}
	if o.MinBackoff == 0 {
		o.MinBackoff = 10 * time.Millisecond
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = 5 * time.Second
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = 10 * time.Second
	}
}

// Supervisor runs a set of plugins.
type Supervisor struct {
	log     *zap.Logger
	reaper  *reaper.Reaper
	store   *state.Store
	opts    Options
	plugins map[string]*managed
	order   []string
	stopped chan struct{}
	wg      sync.WaitGroup

	shutdownOnce, stopOnce sync.Once

	// lifeMu orders the snapshot lifecycle against plugin starts: a plugin
	// that goes up between /snapshot/prepare and the restore (a crash
	// restart, a hot-swap) is quiesced too, and one that went up just
	// before a restore is never left quiesced after it.
	lifeMu   sync.Mutex
	prepared bool
}

// managed is one plugin slot; its process comes and goes.
type managed struct {
	spec Spec
	log  *zap.Logger

	mu    sync.Mutex
	up    *instance     // nil while down
	ready chan struct{} // closed when up becomes non-nil

	wantOnce sync.Once
	wanted   chan struct{} // closed when a caller needs the plugin

	fileID  fileID         // of the executable the running instance came from; guarded by mu
	swapReq chan time.Time // a hot-swap asked for at that time (watchFiles)

	// carried is what a replaced instance handed over, held until its
	// replacement took it (only keep's goroutine touches it).
	carried *carried
}

// carried is a plugin's state and fds for its successor (package carry).
type carried struct {
	state []byte
	files []*os.File
}

func (c *carried) close() {
	for _, f := range c.files {
		f.Close()
	}
}

// want marks the plugin as needed now, which ends its wait to be started.
func (m *managed) want() { m.wantOnce.Do(func() { close(m.wanted) }) }

// instance is one running plugin process.
type instance struct {
	client  *plugin.Client
	conn    *grpc.ClientConn
	control controlpb.ControlClient
	runner  *reapedRunner // nil when attached to a hand-started plugin
	health  *controlpb.HealthResponse
	// exited is closed when the plugin process has ended.
	exited <-chan struct{}
	// unwatch ends the watch of a hand-started plugin's end, or is nil.
	unwatch func()
	// carrySock is envd-init's end of the plugin's carry socket, or nil.
	carrySock *os.File
	// sockDir is Options.SocketDir, where the plugin's socket directory
	// lies (removed with it), or "".
	sockDir string
	log     *zap.Logger
}

// status describes how the plugin ended.
func (i *instance) status() string {
	if i.runner == nil {
		return "ended (started by hand: status unknown)"
	}
	return i.runner.exit.String()
}

// close drops the connection to a plugin that ended or is being stopped.
func (i *instance) close() {
	i.client.Kill()
	if i.carrySock != nil {
		i.carrySock.Close()
	}
	if i.runner != nil {
		// Killed (or gone): its sockets serve nobody any more.
		removeSocketDir(i.log, i.sockDir, i.health.GetHttpSocket())
	}
	if i.runner == nil {
		// go-plugin leaves an attached plugin and its connection alone.
		_ = i.conn.Close()
		i.unwatch()
	}
}

// New prepares a supervisor; Start launches the plugins.
func New(log *zap.Logger, r *reaper.Reaper, store *state.Store, specs []Spec, opts Options) *Supervisor {
	opts.setDefaults()
	s := &Supervisor{log: log, reaper: r, store: store, opts: opts, plugins: map[string]*managed{}, stopped: make(chan struct{})}
	for _, sp := range specs {
		s.plugins[sp.Name] = &managed{spec: sp, log: log.With(zap.String("plugin", sp.Name)), ready: make(chan struct{}), wanted: make(chan struct{}), swapReq: make(chan time.Time, 1)}
		s.order = append(s.order, sp.Name)
	}
	store.Subscribe(s.push)
	return s
}

// The first plugin (envd-proc: a sandbox's first call is a command) starts
// alone. On two vCPUs, plugins that start next to it, or next to its first
// command, share the CPU with them: measured, starting the others at once
// made the first Start ~8 ms later. So the others wait until the first has
// been up for othersAfter (or until firstHeadStart if it is slow to come up),
// unless a call needs one of them sooner.
const (
	firstHeadStart = 100 * time.Millisecond
	othersAfter    = 50 * time.Millisecond
)

// Start launches the plugins in order (see othersAfter) and keeps them
// running until Stop.
func (s *Supervisor) Start() {
	if s.opts.SocketDir != "" {
		// Never in the system temp dir: only envd's own directory.
		go removeStale(s.log, s.opts.SocketDir, time.Now())
	}
	if s.opts.WatchFiles {
		go s.watchFiles()
	}
	for i, name := range s.order {
		m := s.plugins[name]
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if i > 0 && !s.holdBack(m) {
				return
			}
			s.keep(m)
		}()
	}
}

// holdBack waits until m may start; false means the supervisor stopped.
func (s *Supervisor) holdBack(m *managed) bool {
	_, firstUp := s.plugins[s.order[0]].current()
	slow := time.NewTimer(firstHeadStart)
	defer slow.Stop()
	var grace <-chan time.Time
	for {
		select {
		case <-firstUp:
			firstUp = nil
			slow.Stop()
			grace = time.After(othersAfter)
			continue
		case <-slow.C:
		case <-grace:
		case <-m.wanted:
		case <-s.stopped:
			return false
		}
		return true
	}
}

// keep runs one plugin until Stop, restarting it when it exits.
func (s *Supervisor) keep(m *managed) {
	// A stop before the replacement took the predecessor's fds (a stop
	// during its handshake) leaves them to nobody else.
	defer func() {
		if m.carried != nil {
			m.carried.close()
			m.carried = nil
		}
	}()
	backoff := s.opts.MinBackoff
	var swapAt time.Time // when the swap being done was asked for
	for {
		select {
		case <-s.stopped:
			return
		default:
		}
		began := time.Now()
		inst, err := s.launch(m)
		if s.opts.OnWork != nil {
			s.opts.OnWork()
		}
		if err != nil {
			m.log.Error("plugin start failed", zap.Error(err), zap.Duration("retry_in", backoff))
		} else {
			m.log.Info("plugin up", zap.Int("pid", int(inst.health.GetPid())), zap.Duration("took", time.Since(began)))
			if !swapAt.IsZero() {
				m.log.Info("plugin swapped", zap.Duration("since_file_change", time.Since(swapAt)))
				swapAt = time.Time{}
			}
			select {
			case <-inst.exited:
				m.log.Error("plugin exited; restarting", zap.String("status", inst.status()))
			case at := <-m.swapReq:
				s.handover(m, inst)
				swapAt, backoff = at, s.opts.MinBackoff
				continue // the replacement starts at once
			case <-s.stopped:
				return
			}
			m.setDown(inst)
			inst.close() // the process is gone
			// A plugin that ran for a while earns a fast restart.
			if time.Since(began) > 10*time.Second {
				backoff = s.opts.MinBackoff
			}
		}
		select {
		case <-time.After(backoff):
		case <-s.stopped:
			return
		}
		backoff = min(backoff*2, s.opts.MaxBackoff)
	}
}

// handoverExit bounds how long a replaced plugin may take to finish its
// calls and exit (its own bound is 30 s) before it is killed.
const handoverExit = 35 * time.Second

// handover hands m's work from inst to the replacement keep() starts next:
// calls wait for the replacement from now on; the old plugin passes on what
// it holds (envd-proc: stops reading output, ends each stream after the
// last byte it read) and exits once its calls have finished, while the
// replacement already serves.
func (s *Supervisor) handover(m *managed, inst *instance) {
	m.setDown(inst)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	res, err := inst.control.Handover(ctx, &controlpb.HandoverRequest{})
	cancel()
	if err == nil && (len(res.GetState()) > 0 || res.GetFds() > 0) {
		c := &carried{state: res.GetState()}
		if n := int(res.GetFds()); n > 0 {
			if inst.carrySock == nil {
				err = fmt.Errorf("%d fds announced without a carry socket", n)
			} else {
				// Sent before the answer: they wait in the socket already.
				c.files, err = carry.Recv(inst.carrySock, n, 5*time.Second)
			}
		}
		if err != nil {
			m.log.Warn("plugin state lost in the handover", zap.Error(err))
			err = nil // the old plugin has stopped its work all the same
		} else {
			if m.carried != nil {
				m.carried.close()
			}
			m.carried = c
		}
	}
	if err != nil {
		// It may still be reading: the replacement must not start next to
		// it. A SIGKILL costs what a crash costs (go-plugin's graceful Kill
		// would run the plugin's Shutdown, which ends user processes).
		m.log.Warn("plugin handover failed; killing it before its replacement starts", zap.Error(err))
		_ = inst.runner.Kill(context.Background())
		select {
		case <-inst.exited:
		case <-time.After(5 * time.Second):
		}
		inst.close()
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		select {
		case <-inst.exited:
		case <-time.After(handoverExit):
			m.log.Warn("replaced plugin did not exit; killing it")
		case <-s.stopped:
		}
		inst.close()
	}()
}

func (s *Supervisor) launch(m *managed) (*instance, error) {
	// The file about to run; a swap asked for before now is done by this start.
	id, _ := statID(m.spec.Path)
	m.mu.Lock()
	m.fileID = id
	m.mu.Unlock()
	select {
	case <-m.swapReq:
	default:
	}
	var run *reapedRunner
	var carrySock *os.File
	var theirFiles []*os.File // closed once the plugin has them
	defer func() {
		for _, f := range theirFiles {
			f.Close()
		}
	}()
	// started is run for the stop watch below, which runs beside go-plugin.
	var started atomic.Pointer[reapedRunner]
	var reattach *plugin.ReattachConfig
	if m.spec.Reattach != "" {
		ra, err := contract.LoadReattach(m.spec.Reattach)
		if err == nil {
			reattach, err = ra.Config()
		}
		if err != nil {
			return nil, fmt.Errorf("attach to %s started by hand: %w", m.spec.Name, err)
		}
	}
	cc := &plugin.ClientConfig{
		HandshakeConfig:  contract.Handshake,
		Plugins:          plugin.PluginSet{contract.DispenseName: &contract.GRPCPlugin{}},
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		StartTimeout:     s.opts.StartTimeout,
		Logger:           hclog.New(&hclog.LoggerOptions{Output: io.Discard, Level: hclog.Off}),
		// The plugin line carries its own caller; ours would be noise.
		Stderr: &lineLogger{log: m.log.WithOptions(zap.WithCaller(false))},
		// go-plugin reads stderr through a buffer of this size (64 KiB by
		// default, for the life of the plugin, one per plugin); a longer
		// line comes in pieces that lineLogger joins again.
		PluginLogBufferSize: 4 << 10,
		// go-plugin hands over a template command carrying the handshake
		// environment; we run our own executable with it.
		RunnerFunc: func(_ hclog.Logger, tmpl *exec.Cmd, _ string) (runner.Runner, error) {
			cmd := exec.Command(m.spec.Path, m.spec.Args...)
			cmd.Env = tmpl.Env
			// Its own process group: a signal to envd-init's group (a
			// terminal's ^C) must not reach plugins behind envd-init's back;
			// envd-init stops them in order.
			// Pdeathsig: a plugin never outlives a crashed envd-init (no
			// envd-init thread exits while it runs: nothing locks and drops one).
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
			if m.spec.CgroupFD >= 0 {
				cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, m.spec.CgroupFD
			}
			if m.spec.Vault != nil {
				f, err := m.spec.Vault.Connect()
				if err != nil {
					return nil, fmt.Errorf("vault socket for %s: %w", m.spec.Name, err)
				}
				// ExtraFiles[0] is fd 3 in the plugin.
				cmd.ExtraFiles = []*os.File{f}
				cmd.Env = append(cmd.Env, fdvault.EnvFD+"=3")
				theirFiles = append(theirFiles, f)
			}
			if m.spec.Carry {
				ours, theirs, err := carry.Pair()
				if err != nil {
					return nil, fmt.Errorf("carry socket for %s: %w", m.spec.Name, err)
				}
				if carrySock != nil {
					carrySock.Close() // a start retried by go-plugin
				}
				carrySock = ours
				theirFiles = append(theirFiles, theirs)
				cmd.Env = append(cmd.Env, fmt.Sprintf("%s=%d", carry.EnvFD, 3+len(cmd.ExtraFiles)))
				cmd.ExtraFiles = append(cmd.ExtraFiles, theirs)
				if c := m.carried; c != nil && len(c.files) > 0 {
					// Duplicates: the runner closes what it passed once the
					// plugin started, and ours stay until it took them over.
					dups, err := carry.Dup(c.files)
					if err != nil {
						return nil, fmt.Errorf("fds for %s's take-over: %w", m.spec.Name, err)
					}
					// Closed with the sockets when launch returns, whether or
					// not the plugin started (a stop during the handshake).
					theirFiles = append(theirFiles, dups...)
					nums := make([]string, len(dups))
					for i := range dups {
						nums[i] = fmt.Sprint(3 + len(cmd.ExtraFiles) + i)
					}
					cmd.Env = append(cmd.Env, carry.EnvCarried+"="+strings.Join(nums, ","))
					cmd.ExtraFiles = append(cmd.ExtraFiles, dups...)
				}
			}
			r, err := newReapedRunner(s.reaper, cmd)
			run = r
			if err == nil {
				started.Store(r)
			}
			return r, err
		},
		GRPCDialOptions:  contract.DialOptions(),
		UnixSocketConfig: &plugin.UnixSocketConfig{TempDir: s.opts.SocketDir},
	}
	if reattach != nil {
		cc.RunnerFunc, cc.UnixSocketConfig, cc.Reattach = nil, nil, reattach
	}
	client := plugin.NewClient(cc)
	fail := func(err error) (*instance, error) {
		client.Kill()
		if carrySock != nil {
			carrySock.Close()
		}
		return nil, err
	}
	// A stop must not wait StartTimeout for a plugin stuck before its
	// handshake (go-plugin's Kill waits for the handshake's lock): kill the
	// process itself, which ends the handshake at once.
	handshook := make(chan struct{})
	go func() {
		select {
		case <-s.stopped:
			if r := started.Load(); r != nil {
				_ = r.Kill(context.Background())
			}
		case <-handshook:
		}
	}()
	rpc, err := client.Client()
	close(handshook)
	if err != nil {
		return fail(fmt.Errorf("handshake with %s: %w", m.spec.Name, err))
	}
	raw, err := rpc.Dispense(contract.DispenseName)
	if err != nil {
		return fail(fmt.Errorf("dispense %s: %w", m.spec.Name, err))
	}
	conn, ok := raw.(*grpc.ClientConn)
	if !ok {
		return fail(fmt.Errorf("%s dispensed %T, want a gRPC connection", m.spec.Name, raw))
	}
	inst := &instance{client: client, conn: conn, control: controlpb.NewControlClient(conn), runner: run, carrySock: carrySock, sockDir: s.opts.SocketDir, log: m.log}
	if reattach != nil {
		gone, unwatch, err := processGone(reattach.Pid)
		if err != nil {
			_ = conn.Close()
			return fail(fmt.Errorf("attach to %s started by hand (pid %d): %w", m.spec.Name, reattach.Pid, err))
		}
		inst.exited, inst.unwatch = gone, unwatch
		fail = func(err error) (*instance, error) {
			inst.close()
			return nil, err
		}
	} else {
		inst.exited = run.Exited()
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.StartTimeout)
	defer cancel()
	cfg := s.store.Config()
	// Both at once: one round trip less before the plugin serves.
	healthErr := make(chan error, 1)
	go func() {
		var err error
		inst.health, err = inst.control.Health(ctx, &controlpb.HealthRequest{})
		healthErr <- err
	}()
	_, cerr := inst.control.Configure(ctx, cfg)
	herr := <-healthErr
	if cerr != nil {
		return fail(fmt.Errorf("configure %s: %w", m.spec.Name, cerr))
	}
	if herr != nil {
		return fail(fmt.Errorf("health of %s: %w", m.spec.Name, herr))
	}
	if c := m.carried; c != nil && reattach == nil {
		// Before it serves: the first call finds the predecessor's state.
		_, err := inst.control.TakeOver(ctx, &controlpb.TakeOverRequest{State: c.state, Fds: uint32(len(c.files))})
		select {
		case <-inst.exited:
			// Died with it: the next start gets it again (we hold copies).
			return fail(fmt.Errorf("take over by %s: %w", m.spec.Name, errors.Join(err, errors.New("plugin exited"))))
		default:
		}
		if err != nil {
			m.log.Warn("plugin did not take over its predecessor's state", zap.Error(err))
		}
		c.close()
		m.carried = nil
	}
	if run != nil && run.cgroupRefused != nil {
		m.log.Warn("plugin runs outside its cgroup: the kernel refused to start it there", zap.Error(run.cgroupRefused))
		m.spec.CgroupFD = -1 // restarts too
	}
	m.setUp(inst)
	// A change that landed between reading the config and going up was
	// not pushed to this instance.
	if now := s.store.Config(); now.GetGeneration() != cfg.GetGeneration() {
		s.configure(m, inst, now)
	}
	// Up after a /snapshot/prepare that it missed: quiesce it as well.
	// After setUp, so that a prepare or restore running now either sees
	// this instance or has already set what is checked here.
	s.lifeMu.Lock()
	if s.prepared {
		if _, err := inst.control.SnapshotPrepare(ctx, &controlpb.SnapshotPrepareRequest{}); err != nil {
			m.log.Warn("plugin started after /snapshot/prepare did not quiesce", zap.Error(err))
		}
	}
	s.lifeMu.Unlock()
	return inst, nil
}

func (m *managed) setUp(inst *instance) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.up = inst
	close(m.ready)
}

func (m *managed) setDown(inst *instance) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.up == inst {
		m.up = nil
		m.ready = make(chan struct{})
	}
}

func (m *managed) current() (*instance, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.up, m.ready
}

// push is the state store's subscriber: every change reaches every plugin.
func (s *Supervisor) push(cfg *controlpb.Config) {
	for _, name := range s.order {
		m := s.plugins[name]
		if inst, _ := m.current(); inst != nil {
			s.configure(m, inst, cfg)
		}
	}
}

func (s *Supervisor) configure(m *managed, inst *instance, cfg *controlpb.Config) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := inst.control.Configure(ctx, cfg); err != nil {
		// It is restarting; the start path pushes the newest config.
		m.log.Warn("config push failed", zap.Error(err))
	}
}

// wait returns the plugin's running instance, waiting at most WaitReady.
// An instance whose connection is stale (a call could not reach it) counts
// as down: the caller waits for its replacement.
func (s *Supervisor) wait(ctx context.Context, name string, stale grpc.ClientConnInterface) (*instance, error) {
	m, ok := s.plugins[name]
	if !ok {
		return nil, connect.NewError(connect.CodeUnimplemented, fmt.Errorf("no plugin %s in this envd", name))
	}
	t := time.NewTimer(s.opts.WaitReady)
	defer t.Stop()
	for {
		inst, ready := m.current()
		var wake <-chan struct{} = ready
		if inst == nil {
			m.want()
		} else {
			if stale == nil || grpc.ClientConnInterface(inst.conn) != stale {
				return inst, nil
			}
			select {
			case <-inst.exited:
				// keep() marks it down right after; look again shortly.
				wake = nil
			default:
				wake = inst.exited
			}
		}
		var retry <-chan time.Time
		if wake == nil {
			retry = time.After(time.Millisecond)
		}
		select {
		case <-wake:
		case <-retry:
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
			}
			return nil, connect.NewError(connect.CodeCanceled, ctx.Err())
		case <-t.C:
			return nil, connect.NewError(connect.CodeUnavailable,
				fmt.Errorf("plugin %s is not running (starting or restarting); try again", name))
		case <-s.stopped:
			return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("plugin %s: envd is stopping", name))
		}
	}
}

// Conn returns the plugin's gRPC connection, for the proxy.
func (s *Supervisor) Conn(name string) func(ctx context.Context, stale grpc.ClientConnInterface) (grpc.ClientConnInterface, error) {
	return func(ctx context.Context, stale grpc.ClientConnInterface) (grpc.ClientConnInterface, error) {
		inst, err := s.wait(ctx, name, stale)
		if err != nil {
			return nil, err
		}
		return inst.conn, nil
	}
}

// HTTPSocket returns the Unix socket of the plugin's HTTP server.
func (s *Supervisor) HTTPSocket(ctx context.Context, name string) (string, error) {
	inst, err := s.wait(ctx, name, nil)
	if err != nil {
		return "", err
	}
	if inst.health.GetHttpSocket() == "" {
		return "", connect.NewError(connect.CodeInternal, fmt.Errorf("plugin %s serves no HTTP", name))
	}
	return inst.health.GetHttpSocket(), nil
}

// HandoffSocket returns the socket that takes whole client connections for
// the plugin's HTTP server, if the plugin is up now. It does not wait: the
// caller then serves the request another way (the proxy, which waits), so
// no call waits twice.
func (s *Supervisor) HandoffSocket(name string) (string, error) {
	m, ok := s.plugins[name]
	if !ok {
		return "", connect.NewError(connect.CodeUnimplemented, fmt.Errorf("no plugin %s in this envd", name))
	}
	inst, _ := m.current()
	if inst == nil {
		m.want()
		return "", connect.NewError(connect.CodeUnavailable, fmt.Errorf("plugin %s is not running", name))
	}
	if inst.health.GetHandoffSocket() == "" {
		return "", connect.NewError(connect.CodeInternal, fmt.Errorf("plugin %s takes no connections", name))
	}
	return inst.health.GetHandoffSocket(), nil
}

// Pid returns the running plugin's pid, or 0.
func (s *Supervisor) Pid(name string) int {
	if m, ok := s.plugins[name]; ok {
		if inst, _ := m.current(); inst != nil {
			return int(inst.health.GetPid())
		}
	}
	return 0
}

// Ready waits until every plugin is up or ctx ends.
func (s *Supervisor) Ready(ctx context.Context) error {
	for _, name := range s.order {
		s.plugins[name].want()
	}
	for _, name := range s.order {
		_, ready := s.plugins[name].current()
		select {
		case <-ready:
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", name, ctx.Err())
		}
	}
	return nil
}

// each calls fn on every running plugin in parallel and joins the errors;
// ownOnly leaves out plugins started by hand (--reattach).
func (s *Supervisor) each(ctx context.Context, what string, ownOnly bool, fn func(context.Context, controlpb.ControlClient) error) error {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for _, name := range s.order {
		inst, _ := s.plugins[name].current()
		if inst == nil || (ownOnly && inst.runner == nil) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx, inst.control); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("%s %s: %w", what, name, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// SnapshotPrepare tells every plugin to quiesce before a VM snapshot.
func (s *Supervisor) SnapshotPrepare(ctx context.Context) error {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	s.prepared = true
	return s.each(ctx, "snapshot prepare", false, func(ctx context.Context, c controlpb.ControlClient) error {
		_, err := c.SnapshotPrepare(ctx, &controlpb.SnapshotPrepareRequest{})
		return err
	})
}

// SnapshotRestored tells every plugin the VM was restored.
func (s *Supervisor) SnapshotRestored(ctx context.Context) error {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	s.prepared = false
	return s.each(ctx, "snapshot restored", false, func(ctx context.Context, c controlpb.ControlClient) error {
		_, err := c.SnapshotRestored(ctx, &controlpb.SnapshotRestoredRequest{})
		return err
	})
}

// Shutdown asks every plugin to end its user-visible work (user processes,
// watches) and ends restarts, but leaves the plugins serving: the streams
// this ends still carry their last events (a process's end) to their
// clients, which go-plugin's abrupt stop of a plugin's gRPC server would
// cut. Stop ends the plugins.
func (s *Supervisor) Shutdown(ctx context.Context) {
	s.shutdownOnce.Do(func() {
		close(s.stopped)
		// A plugin started by hand keeps its state for the next envd-init
		// that attaches to it: only a detach.
		err := s.each(ctx, "shutdown", true, func(ctx context.Context, c controlpb.ControlClient) error {
			_, err := c.Shutdown(ctx, &controlpb.ShutdownRequest{})
			return err
		})
		if err != nil {
			s.log.Warn("plugin shutdown", zap.Error(err))
		}
	})
}

// Stop shuts the plugins down (Shutdown, if not done yet), then stops them.
func (s *Supervisor) Stop(ctx context.Context) {
	s.Shutdown(ctx)
	first := false
	s.stopOnce.Do(func() { first = true })
	if !first {
		return
	}
	s.wg.Wait()
	var wg sync.WaitGroup
	for _, name := range s.order {
		m := s.plugins[name]
		inst, _ := m.current()
		if inst == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			inst.close()
			if inst.runner == nil {
				m.log.Info("detached from the plugin started by hand; it keeps running")
				return
			}
			// How each plugin ended shows whether the stop was clean (exit
			// status 0) or had to kill it.
			select {
			case <-inst.exited:
				m.log.Info("plugin stopped", zap.String("status", inst.status()))
			case <-ctx.Done():
				m.log.Warn("plugin still running after stop", zap.Error(ctx.Err()))
			}
		}()
	}
	wg.Wait()
}

// lineLogger re-logs a plugin's stderr (zap JSON lines) into envd-init's log.
type lineLogger struct {
	log *zap.Logger
	buf []byte
}

func (l *lineLogger) Write(p []byte) (int, error) {
	// go-plugin writes a line, then its newline separately.
	l.buf = append(l.buf, p...)
	for {
		i := indexNL(l.buf)
		if i < 0 {
			break
		}
		l.emit(l.buf[:i])
		l.buf = l.buf[i+1:]
	}
	if len(l.buf) > 64<<10 {
		l.emit(l.buf)
		l.buf = l.buf[:0]
	}
	return len(p), nil
}

func indexNL(b []byte) int {
	for i, c := range b {
		if c == '\n' {
			return i
		}
	}
	return -1
}

func (l *lineLogger) emit(line []byte) {
	if len(line) == 0 {
		return
	}
	var entry map[string]any
	if json.Unmarshal(line, &entry) != nil {
		// Not our JSON: a panic trace or a library writing to stderr.
		l.log.Warn("plugin stderr", zap.ByteString("line", line))
		return
	}
	lvl, _ := entry["level"].(string)
	msg, _ := entry["msg"].(string)
	fields := make([]zap.Field, 0, len(entry))
	for k, v := range entry {
		switch k {
		case "level", "msg", "timestamp", "plugin":
			continue
		}
		fields = append(fields, zap.Any(k, v))
	}
	level, err := zapcore.ParseLevel(lvl)
	if err != nil {
		level = zapcore.InfoLevel
	}
	// A plugin's fatal or panic line must not end envd-init.
	level = min(level, zapcore.ErrorLevel)
	if ce := l.log.Check(level, msg); ce != nil {
		ce.Write(fields...)
	}
}
