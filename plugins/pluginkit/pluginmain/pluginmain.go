// Package pluginmain is the shared main of every envd plugin: under envd-init
// it serves go-plugin gRPC (public service + control API) and, when the
// plugin has one, a plain HTTP server on a private Unix socket; with
// --standalone it serves its own service directly on a TCP port for
// debugging, through the same code.
package pluginmain

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	controlpb "github.com/envd-project/envd/gen/control"
	"github.com/envd-project/envd/internal/logging"
	"github.com/envd-project/envd/internal/memtrim"
	"github.com/envd-project/envd/internal/users"
	"github.com/envd-project/envd/plugins/pluginkit/connectadapter"
	"github.com/envd-project/envd/plugins/pluginkit/contract"
	"github.com/envd-project/envd/plugins/pluginkit/defaults"
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
}

// Spec names a plugin and builds its subsystem.
type Spec struct {
	Name string
	New  func(env Env) (Subsystem, error)
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
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	log := logging.New(*verbose).With(zap.String("plugin", spec.Name))
	defer func() { _ = log.Sync() }()

	if !*standalone && os.Getenv(contract.Handshake.MagicCookieKey) != contract.Handshake.MagicCookieValue {
		fmt.Fprintf(os.Stderr, "%s is a plugin of envd-init; run it with --standalone --port N to serve it alone\n", spec.Name)
		return 2
	}

	run, stop := context.WithCancel(context.Background())
	defer stop()
	sub, err := spec.New(Env{
		Log: log, Defaults: defaults.NewStore(&controlpb.Config{DefaultUser: *user}), Users: users.Default,
		CgroupRoot: *cgroupRoot, NoCgroups: *noCgroups, Standalone: *standalone, Run: run,
	})
	if err != nil {
		log.Error("start failed", zap.Error(err))
		return 1
	}
	if *standalone {
		return serveStandalone(log, sub, *addr, *port)
	}
	return servePlugin(log, spec.Name, sub)
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

// controllable adds the Unix sockets of the plugin's HTTP server and the
// hot-swap handover.
type controllable struct {
	Subsystem
	socket, handoff string
	// drain finishes every call and HTTP request, then lets the plugin exit.
	drain func()
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

func (c controllable) Handover(ctx context.Context) error {
	var err error
	if h, ok := c.Subsystem.(Handoverer); ok {
		err = h.Handover(ctx)
	}
	// After this call has been answered: the drain waits for it too.
	go c.drain()
	return err
}

func (c controllable) HTTPSocket() string    { return c.socket }
func (c controllable) HandoffSocket() string { return c.handoff }

func servePlugin(log *zap.Logger, name string, sub Subsystem) int {
	var (
		grpcSrv  *grpc.Server
		httpSrvs []*http.Server
	)
	ctl := controllable{Subsystem: sub}
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
	trim := memtrim.New(trimIdle)
	go trim.Run(context.Background())
	if h := sub.HTTPHandler(); h != nil {
		// Next to our go-plugin socket, in envd-init's private run directory
		// (never /tmp, which sandbox users clean).
		dir, err := os.MkdirTemp(os.Getenv(plugin.EnvUnixSocketDir), name+"-http-")
		if err != nil {
			log.Error("http socket dir", zap.Error(err))
			return 1
		}
		defer os.RemoveAll(dir)
		ctl.socket = filepath.Join(dir, "http.sock")
		ln, err := net.Listen("unix", ctl.socket)
		if err != nil {
			log.Error("http socket", zap.Error(err))
			return 1
		}
		srv := &http.Server{Handler: trim.Middleware(h), ReadHeaderTimeout: 30 * time.Second, ErrorLog: zap.NewStdLog(log)}
		httpSrvs = append(httpSrvs, srv)
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		// Client connections handed over whole by envd-init: one request each.
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
			Handler: handoff.Serve(trim.Middleware(publicMux(sub))), ConnContext: handoff.ConnContext,
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
	signal.Ignore(syscall.SIGINT)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	go func() {
		<-sig
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = sub.Shutdown(ctx)
		os.Exit(0)
	}()
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: contract.Handshake,
		Plugins: plugin.PluginSet{contract.DispenseName: &contract.GRPCPlugin{Register: func(s *grpc.Server) {
			controlpb.RegisterControlServer(s, &contract.ControlServer{Name: name, Target: ctl})
			sub.RegisterGRPC(s)
		}}},
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			opts = append(opts, contract.ServerOptions()...)
			opts = append(opts, grpc.ChainUnaryInterceptor(trim.UnaryInterceptor), grpc.ChainStreamInterceptor(trim.StreamInterceptor))
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
