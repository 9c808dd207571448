// Package pluginmain is the shared main of every envd plugin and runs in every
// plugin: under envd-init it serves go-plugin gRPC (public service + control
// API) and, when the plugin has one, a plain HTTP server and a handoff socket
// on private Unix sockets; with --standalone it serves its own service
// directly on a TCP port for debugging, through the same code. It also runs
// the plugin's idle trim.
package pluginmain

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	controlpb "github.com/envd-project/envd/gen/control"
	"github.com/envd-project/envd/internal/atomicfile"
	"github.com/envd-project/envd/internal/gomaxprocs"
	"github.com/envd-project/envd/internal/logging"
	"github.com/envd-project/envd/internal/memtrim"
	"github.com/envd-project/envd/internal/users"
	"github.com/envd-project/envd/plugins/pluginkit/carry"
	"github.com/envd-project/envd/plugins/pluginkit/connectadapter"
	"github.com/envd-project/envd/plugins/pluginkit/contract"
	"github.com/envd-project/envd/plugins/pluginkit/defaults"
	"github.com/envd-project/envd/plugins/pluginkit/grpcadapter"
	"github.com/envd-project/envd/plugins/pluginkit/handoff"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Subsystem is one plugin's logic as the shared main sees it.
type Subsystem interface {
	Configure(ctx context.Context, cfg *controlpb.Config) error
	SnapshotPrepare(ctx context.Context) error
	SnapshotRestored(ctx context.Context) error
	Shutdown(ctx context.Context) error
	// RegisterGRPC adds the public services to the go-plugin gRPC server.
	RegisterGRPC(s *grpc.Server)
	// Mount adds the public services (and plain HTTP routes) for standalone use.
	Mount(mux *http.ServeMux, opts ...connect.HandlerOption)
	// HTTPHandler is the plain HTTP API served on a Unix socket under
	// envd-init (envd-fs: /files), or nil.
	HTTPHandler() http.Handler
}

// Env is what a subsystem is built from.
type Env struct {
	Log        *zap.Logger
	Defaults   *defaults.Store
	Users      *users.DB
	CgroupRoot string
	NoCgroups  bool
	Standalone bool
	// Run lives as long as the plugin; background work hangs off it.
	Run context.Context
	// Trim is the plugin's idle trim: Touch it for work that leaves
	// garbage without a request (requests and streams count already).
	Trim *memtrim.Trimmer
}

// Spec names a plugin and builds its subsystem.
type Spec struct {
	Name string
	// Procs is the plugin's GOMAXPROCS (package gomaxprocs; 0: its default).
	Procs int
	New   func(env Env) (Subsystem, error)
}

// Main runs the plugin and returns its exit code.
func Main(spec Spec, args []string) int {
	fs := flag.NewFlagSet(spec.Name, flag.ContinueOnError)
	standalone := fs.Bool("standalone", false, "serve the plugin's service directly on --port (debugging)")
	port := fs.Int("port", 0, "TCP port for --standalone")
	addr := fs.String("addr", "127.0.0.1", "address for --standalone")
	verbose := fs.Bool("verbose", false, "debug logging")
	cgroupRoot := fs.String("cgroup-root", "/sys/fs/cgroup", "cgroup v2 root")
	noCgroups := fs.Bool("no-cgroups", false, "do not place processes into cgroups")
	user := fs.String("default-user", "root", "default user (--standalone)")
	debug := fs.Bool("debug-server", false, "serve go-plugin without envd-init (under a debugger) and print the reattach info for envd-init --reattach")
	reattachFile := fs.String("reattach-file", "", "with --debug-server: also write the reattach info to this file (envd-init --reattach NAME=FILE rereads it)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	log := logging.New(*verbose).With(zap.String("plugin", spec.Name))
	defer func() { _ = log.Sync() }()

	*debug = *debug || *reattachFile != ""
	if !*standalone && !*debug && os.Getenv(contract.Handshake.MagicCookieKey) != contract.Handshake.MagicCookieValue {
		fmt.Fprintf(os.Stderr, "%s is a plugin of envd-init; run it with --standalone --port N to serve it alone,\n"+
			"or with --debug-server to serve envd-init --reattach\n", spec.Name)
		return 2
	}

	if !*standalone {
		gomaxprocs.Set(spec.Procs)
		memtrim.SetGC()
	}
	run, stop := context.WithCancel(context.Background())
	defer stop()
	trim := memtrim.New(trimIdle)
	sub, err := spec.New(Env{
		Log: log, Defaults: defaults.NewStore(&controlpb.Config{DefaultUser: *user}), Users: users.Default,
		CgroupRoot: *cgroupRoot, NoCgroups: *noCgroups, Standalone: *standalone, Run: run, Trim: trim,
	})
	if err != nil {
		log.Error("start failed", zap.Error(err))
		return 1
	}
	panicAtStartForTests(spec.Name)
	if *standalone {
		return serveStandalone(log, sub, *addr, *port)
	}
	var dbg *debugServer
	if *debug {
		dbg = &debugServer{file: *reattachFile}
	}
	return servePlugin(log, spec.Name, sub, dbg, trim)
}

// PanicAtStartEnv names plugins (comma-separated) that panic right after
// they are built, on every start: the PID-namespace test uses it to show
// that a panicking plugin never takes envd-init down and that a plugin
// crashing in a loop is restarted with capped backoff. It is read only
// here, once per plugin start, and does nothing when unset.
const PanicAtStartEnv = "ENVD_TEST_PANIC_AT_START"

func panicAtStartForTests(name string) {
	for _, n := range strings.Split(os.Getenv(PanicAtStartEnv), ",") {
		if n == name {
			panic(fmt.Sprintf("%s=%s: %s panics at start (test trigger)", PanicAtStartEnv, os.Getenv(PanicAtStartEnv), name))
		}
	}
}

// publicMux serves the plugin's public API: its Connect services and its
// plain HTTP routes.
func publicMux(sub Subsystem) *http.ServeMux {
	mux := http.NewServeMux()
	sub.Mount(mux, connectadapter.HandlerOptions(users.Default)...)
	if h := sub.HTTPHandler(); h != nil {
		mux.Handle("/", h)
	}
	return mux
}

func serveStandalone(log *zap.Logger, sub Subsystem, addr string, port int) int {
	srv := &http.Server{Handler: publicMux(sub), ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 640 * time.Second}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	ln, err := net.Listen("tcp", net.JoinHostPort(addr, fmt.Sprint(port)))
	if err != nil {
		log.Error("listen failed", zap.Error(err))
		return 1
	}
	log.Info("serving standalone", zap.String("addr", ln.Addr().String()))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = sub.Shutdown(ctx)
		_ = srv.Shutdown(ctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("serve failed", zap.Error(err))
		return 1
	}
	return 0
}

// Handoverer is a Subsystem that passes its work on before a hot-swap
// (envd-proc); the others simply finish their calls.
type Handoverer interface {
	Handover(ctx context.Context) error
}

// Carrier is a Subsystem that carries state (and fds) to its successor
// across a hot-swap (envd-fs: its polling watchers and their inotify
// instances); see package carry.
type Carrier interface {
	// Carry stops the work that goes over and returns its state and the
	// fds it needs; the caller closes the files once they are sent.
	Carry(ctx context.Context) (state []byte, files []*os.File, err error)
	// Resume takes over a predecessor's state and fds, before this plugin
	// serves.
	Resume(ctx context.Context, state []byte, files []*os.File) error
}

// controllable adds the Unix sockets of the plugin's HTTP server and the
// hot-swap handover.
type controllable struct {
	Subsystem
	socket, handoff string
	// drain finishes every call and HTTP request, then lets the plugin exit.
	drain func()
	// carrySock sends fds to the successor (nil: none, as when started by
	// hand); carried are the fds the predecessor sent.
	carrySock *os.File
	carried   *[]*os.File
}

// handoverDrain bounds how long a plugin being replaced waits for its
// HTTP transfers to finish; handoverCalls how long it then lets its gRPC
// calls finish and flush before it exits anyway. go-plugin's own stdio
// stream never ends, so a graceful stop always runs into that bound: it
// must be short, and long enough for streams ended by the handover to be
// written out (they are queued already; writing them takes microseconds).
const (
	handoverDrain = 30 * time.Second
	handoverCalls = 2 * time.Second
)

func (c controllable) Handover(ctx context.Context) (*controlpb.HandoverResponse, error) {
	// After this call has been answered: the drain waits for it too.
	defer func() { go c.drain() }()
	if h, ok := c.Subsystem.(Handoverer); ok {
		return nil, h.Handover(ctx)
	}
	cr, ok := c.Subsystem.(Carrier)
	if !ok {
		return nil, nil
	}
	state, files, err := cr.Carry(ctx)
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	if err != nil {
		return nil, err
	}
	if len(files) > 0 {
		if c.carrySock == nil {
			return nil, errors.New("no carry socket: the state needs fds and cannot be handed over")
		}
		fds, err := fdNumbers(files)
		if err != nil {
			return nil, err
		}
		if err := carry.Send(c.carrySock, fds); err != nil {
			return nil, err
		}
	}
	return &controlpb.HandoverResponse{State: state, Fds: uint32(len(files))}, nil
}

// TakeOver hands the predecessor's state and the fds inherited with it to
// a Carrier.
func (c controllable) TakeOver(ctx context.Context, req *controlpb.TakeOverRequest) error {
	files := *c.carried
	*c.carried = nil
	cr, ok := c.Subsystem.(Carrier)
	if !ok || int(req.GetFds()) != len(files) {
		for _, f := range files {
			f.Close()
		}
		if !ok {
			return errors.New("this plugin takes no state over")
		}
		return fmt.Errorf("%d fds announced, %d inherited", req.GetFds(), len(files))
	}
	return cr.Resume(ctx, req.GetState(), files)
}

// fdNumbers returns the fd numbers of files without switching them to
// blocking mode (as (*os.File).Fd would).
func fdNumbers(files []*os.File) ([]int, error) {
	fds := make([]int, 0, len(files))
	for _, f := range files {
		rc, err := f.SyscallConn()
		if err != nil {
			return nil, fmt.Errorf("fd of %s: %w", f.Name(), err)
		}
		if err := rc.Control(func(fd uintptr) { fds = append(fds, int(fd)) }); err != nil {
			return nil, fmt.Errorf("fd of %s: %w", f.Name(), err)
		}
	}
	return fds, nil
}

func (c controllable) HTTPSocket() string    { return c.socket }
func (c controllable) HandoffSocket() string { return c.handoff }

// debugServer is --debug-server: go-plugin's test mode, which serves
// without the handshake cookie and hands back a reattach config instead of
// talking to a parent on stdout.
type debugServer struct {
	file string // --reattach-file, or ""
}

// announce prints (and writes to --reattach-file) how envd-init attaches.
func (d *debugServer) announce(log *zap.Logger, name string, rc *plugin.ReattachConfig) error {
	b, err := json.Marshal(contract.NewReattach(rc))
	if err != nil {
		return fmt.Errorf("reattach info: %w", err)
	}
	if d.file != "" {
		if err := atomicfile.Write(d.file, string(b)+"\n", 0o600); err != nil {
			return fmt.Errorf("reattach file: %w", err)
		}
	}
	src := "'" + string(b) + "'"
	if d.file != "" {
		src = d.file
	}
	fmt.Printf("%s serving for reattach (pid %d); start envd-init with:\n  --reattach %s=%s\n", name, rc.Pid, name, src)
	log.Info("debug server up", zap.String("reattach", string(b)))
	return nil
}

// debugSocketDir is where a hand-started plugin puts its sockets: envd's
// private run directory when we may create it (as under envd-init),
// else the temp dir.
func debugSocketDir(log *zap.Logger) {
	if os.Getenv(plugin.EnvUnixSocketDir) != "" {
		return
	}
	const dir = "/run/envd"
	if err := os.MkdirAll(dir, 0o700); err != nil {
		log.Warn("sockets go to the temp dir", zap.Error(err))
		return
	}
	_ = os.Setenv(plugin.EnvUnixSocketDir, dir)
}

func servePlugin(log *zap.Logger, name string, sub Subsystem, dbg *debugServer, trim *memtrim.Trimmer) int {
	if dbg != nil {
		debugSocketDir(log)
	}
	var (
		grpcSrv  *grpc.Server
		httpSrvs []*http.Server
		httpDir  string // removed on every way out, os.Exit included
	)
	carried := carry.Inherited()
	ctl := controllable{Subsystem: sub, carrySock: carry.FromEnv(), carried: &carried}
	var drainOnce sync.Once
	ctl.drain = func() {
		drainOnce.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), handoverDrain)
			defer cancel()
			// Transfers in flight finish on this process (their clients'
			// connections are ours); then the gRPC calls, whose streams
			// were ended by the handover, are flushed to envd-init.
			for _, srv := range httpSrvs {
				_ = srv.Shutdown(ctx)
			}
			done := make(chan struct{})
			go func() { grpcSrv.GracefulStop(); close(done) }()
			select {
			case <-done:
			case <-time.After(handoverCalls):
				grpcSrv.Stop()
			}
		})
	}
	go trim.Run(context.Background())
	if h := sub.HTTPHandler(); h != nil {
		// Next to our go-plugin socket, in envd-init's private run directory
		// (never /tmp, which sandbox users clean).
		dir, err := os.MkdirTemp(os.Getenv(plugin.EnvUnixSocketDir), name+"-http-")
		if err != nil {
			log.Error("http socket dir", zap.Error(err))
			return 1
		}
		httpDir = dir
		defer os.RemoveAll(dir)
		ctl.socket = filepath.Join(dir, "http.sock")
		ln, err := net.Listen("unix", ctl.socket)
		if err != nil {
			log.Error("http socket", zap.Error(err))
			return 1
		}
		// The same public handlers a standalone plugin serves, for /files
		// and the calls envd-init offers here first (a small ListDir
		// answers here; a big one is declined and handed over).
		pub := publicMux(sub)
		srv := &http.Server{Handler: trim.Middleware(handoff.Offer(pub)), ReadHeaderTimeout: 30 * time.Second, ErrorLog: zap.NewStdLog(log)}
		httpSrvs = append(httpSrvs, srv)
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		// Client connections handed over by envd-init, one request at a
		// time: each goes back to envd-init once its response is out.
		ctl.handoff = filepath.Join(dir, "handoff.sock")
		hln, err := handoff.Listen(ctl.handoff)
		if err != nil {
			log.Error("handoff socket", zap.Error(err))
			return 1
		}
		// Handed-over connections carry /files, or a call that is big
		// enough to be worth its own connection (ListDir): the same public
		// handlers a standalone plugin serves.
		hsrv := &http.Server{
			Handler: handoff.Serve(trim.Middleware(pub)), ConnContext: handoff.ConnContext, ConnState: handoff.ConnState,
			ReadHeaderTimeout: 30 * time.Second, ErrorLog: zap.NewStdLog(log),
		}
		httpSrvs = append(httpSrvs, hsrv)
		go func() { _ = hsrv.Serve(hln) }()
		defer hsrv.Close()
	}
	// envd-init stops us through the control API and then go-plugin's
	// controller; a SIGTERM from elsewhere (a whole-tree kill) must still
	// end user work first. SIGINT is ignored: a terminal ^C reaches the
	// whole process group and envd-init decides the order.
	sig := make(chan os.Signal, 1)
	var test *plugin.ServeTestConfig
	if dbg == nil {
		signal.Ignore(syscall.SIGINT)
		signal.Notify(sig, syscall.SIGTERM)
		go func() {
			<-sig
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = sub.Shutdown(ctx)
			if httpDir != "" {
				_ = os.RemoveAll(httpDir)
			}
			os.Exit(0)
		}()
	} else {
		// A hand-started plugin belongs to its terminal: ^C stops it like
		// SIGTERM, through the return below, so that its sockets and
		// reattach file go too.
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		stopped, stop := context.WithCancel(context.Background())
		defer stop()
		go func() {
			<-sig
			stop()
		}()
		if dbg.file != "" {
			defer os.Remove(dbg.file)
		}
		reattach := make(chan *plugin.ReattachConfig, 1)
		closed := make(chan struct{})
		test = &plugin.ServeTestConfig{Context: stopped, ReattachConfigCh: reattach, CloseCh: closed}
		go func() {
			select {
			case rc := <-reattach:
				if err := dbg.announce(log, name, rc); err != nil {
					log.Error("debug server", zap.Error(err))
					os.Exit(1)
				}
			case <-closed:
			}
		}()
	}
	plugin.Serve(&plugin.ServeConfig{
		Test:            test,
		HandshakeConfig: contract.Handshake,
		Plugins: plugin.PluginSet{contract.DispenseName: &contract.GRPCPlugin{Register: func(s *grpc.Server) {
			controlpb.RegisterControlServer(s, &contract.ControlServer{Name: name, Target: ctl})
			sub.RegisterGRPC(s)
		}}},
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			opts = append(opts, contract.ServerOptions()...)
			// Outermost: bound whatever status a handler (or the trimmer) returns.
			opts = append(opts, grpc.ChainUnaryInterceptor(grpcadapter.UnaryBoundErrors, trim.UnaryInterceptor),
				grpc.ChainStreamInterceptor(grpcadapter.StreamBoundErrors, trim.StreamInterceptor))
			grpcSrv = grpc.NewServer(opts...)
			return grpcSrv
		},
		Logger: hclog.New(&hclog.LoggerOptions{Output: io.Discard, Level: hclog.Off}),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = sub.Shutdown(ctx)
	return 0
}

// trimIdle is how long a plugin must go without a request before its free
// heap is returned to the OS.
const trimIdle = 3 * time.Second
