// Package app wires envd-init and runs in envd-init: its flags, the sandbox
// state, the reaper, the cgroup layout, the plugin supervisor, the host API and
// the front door, brought up plugins first (they take longest) and stopped
// plugins first (ending user work is what ends open streams).
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/envd-project/envd/envdinit/frontdoor"
	"github.com/envd-project/envd/envdinit/hostapi"
	"github.com/envd-project/envd/envdinit/logexport"
	"github.com/envd-project/envd/envdinit/metrics"
	"github.com/envd-project/envd/envdinit/mmds"
	"github.com/envd-project/envd/envdinit/oom"
	"github.com/envd-project/envd/envdinit/reaper"
	"github.com/envd-project/envd/envdinit/state"
	"github.com/envd-project/envd/envdinit/supervisor"
	"github.com/envd-project/envd/envdinit/sysinit"
	"github.com/envd-project/envd/envdinit/vault"
	controlpb "github.com/envd-project/envd/gen/control"
	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/internal/cgroups"
	"github.com/envd-project/envd/internal/gomaxprocs"
	"github.com/envd-project/envd/internal/logging"
	"github.com/envd-project/envd/internal/memtrim"
	"github.com/envd-project/envd/internal/users"
	"github.com/envd-project/envd/plugins/pluginkit/callinfo"
	"github.com/envd-project/envd/plugins/pluginkit/contract"
	"github.com/envd-project/envd/plugins/pluginkit/grpcadapter"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Build-time identity, set with -ldflags -X.
var (
	Version = "0.6.4"
	Commit  = ""
)

// Config is envd-init's command line.
type Config struct {
	Port       int
	IsNotFC    bool
	Cmd        string
	CgroupRoot string
	NoCgroups  bool
	Flavor     state.Flavor
	Verbose    bool
	PluginDir  string
	MMDSAddr   string
	// Reattach maps a plugin name to where it was started by hand
	// (--reattach NAME=JSON|FILE, for debugging one plugin).
	Reattach map[string]string
	SysInit  sysinit.Mode
}

// Main runs envd-init and returns its exit code.
func Main(args []string) int {
	fdErr := closeInheritedOnExec()
	cfg, code, done := parseFlags(args)
	if done {
		if os.Getpid() != 1 {
			return code
		}
		// PID 1 must not return (the kernel panics): a bad flag on the
		// kernel command line, or --version/--help, runs with the defaults.
		fmt.Fprintf(os.Stderr, "envd-init: as PID 1, running with the default flags instead of %q\n", args)
		cfg, _, _ = parseFlags(nil)
	}
	// As a VM's init: /dev and the console fds before anything opens a file.
	sys := sysinit.Start(cfg.SysInit)
	gomaxprocs.Set(0)
	memtrim.SetGC()
	// Inside Firecracker the host collects our log lines (WIRE §9.10);
	// where to is known once MMDS answers.
	var export *logexport.Exporter
	var also []zapcore.WriteSyncer
	if !cfg.IsNotFC {
		export = logexport.New(os.Stderr)
		also = append(also, export)
	}
	log := logging.New(cfg.Verbose, also...).Named("envd-init")
	defer func() { _ = log.Sync() }()
	if fdErr != nil {
		log.Warn("inherited fds may leak into plugins and user processes", zap.Error(fdErr))
	}
	sys.BringUp(log.Named("sysinit"))
	err := run(cfg, log, export, sys)
	if err != nil {
		log.Error("envd-init failed", zap.Error(err))
	}
	// PID 1 never returns: it powers off or reboots.
	sys.Finish(err)
	if err != nil {
		return 1
	}
	return 0
}

func parseFlags(args []string) (Config, int, bool) {
	var cfg Config
	fs := flag.NewFlagSet("envd-init", flag.ContinueOnError)
	fs.IntVar(&cfg.Port, "port", 49983, "port to serve on")
	fs.BoolVar(&cfg.IsNotFC, "isnotfc", false, "not running inside a Firecracker VM (no MMDS)")
	fs.StringVar(&cfg.Cmd, "cmd", "", "command to start at boot (bash -l -c, as root, tag startCmd)")
	fs.StringVar(&cfg.CgroupRoot, "cgroup-root", "/sys/fs/cgroup", "cgroup v2 root")
	fs.BoolVar(&cfg.NoCgroups, "no-cgroups", false, "do not place processes into cgroups")
	flavor := fs.String("flavor", string(state.FlavorWrenn), "wrenn or e2b")
	fs.BoolVar(&cfg.Verbose, "verbose", false, "debug logging")
	fs.StringVar(&cfg.PluginDir, "plugin-dir", "", "directory of the plugin executables (default: next to envd-init)")
	fs.StringVar(&cfg.MMDSAddr, "mmds-addr", "169.254.169.254:80", "Firecracker MMDS address")
	cfg.Reattach = map[string]string{}
	fs.Func("reattach", "NAME=JSON or NAME=FILE: attach to plugin NAME started by hand with --debug-server instead of starting it (repeatable)", func(v string) error {
		name, src, ok := strings.Cut(v, "=")
		if !ok || src == "" {
			return fmt.Errorf("want NAME=JSON or NAME=FILE, got %q", v)
		}
		if name != contract.Proc && name != contract.FS && name != contract.Net {
			return fmt.Errorf("no plugin %q (want %s, %s or %s)", name, contract.Proc, contract.FS, contract.Net)
		}
		cfg.Reattach[name] = src
		return nil
	})
	sysMode := fs.String("sysinit", string(sysinit.Auto), "system bring-up as a VM's init: auto (when PID 1 and /proc is not mounted), on or off")
	version := fs.Bool("version", false, "print the version and exit")
	commit := fs.Bool("commit", false, "print the commit and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return cfg, 0, true
		}
		return cfg, 2, true
	}
	if *version {
		fmt.Println(Version)
		return cfg, 0, true
	}
	if *commit {
		fmt.Println(Commit)
		return cfg, 0, true
	}
	mode, err := sysinit.ParseMode(*sysMode)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return cfg, 2, true
	}
	cfg.SysInit = mode
	cfg.Flavor = state.Flavor(*flavor)
	if cfg.Flavor != state.FlavorWrenn && cfg.Flavor != state.FlavorE2B {
		fmt.Fprintf(os.Stderr, "--flavor must be wrenn or e2b, not %q\n", *flavor)
		return cfg, 2, true
	}
	return cfg, 0, false
}

func pluginSpecs(cfg Config, cg cgroups.Manager) ([]supervisor.Spec, error) {
	dir := cfg.PluginDir
	if dir == "" {
		exe, err := executable()
		if err != nil {
			return nil, fmt.Errorf("locating envd-init: %w", err)
		}
		dir = filepath.Dir(exe)
	}
	common := []string{"--cgroup-root", cfg.CgroupRoot}
	if cfg.NoCgroups {
		common = append(common, "--no-cgroups")
	}
	if cfg.Verbose {
		common = append(common, "--verbose")
	}
	var specs []supervisor.Spec
	for _, name := range []string{contract.Proc, contract.FS, contract.Net} {
		path := filepath.Join(dir, name)
		reattach := cfg.Reattach[name]
		if _, err := os.Stat(path); err != nil && reattach == "" {
			return nil, fmt.Errorf("plugin %s: %w", name, err)
		}
		// envd-fs carries its polling watchers (their inotify fds) over a hot-swap.
		spec := supervisor.Spec{Name: name, Path: path, Args: common, CgroupFD: -1, Reattach: reattach, Carry: name == contract.FS}
		if fd, ok := cg.FD(cgroups.Forwarder); ok && name == contract.Net {
			spec.CgroupFD = fd
		}
		specs = append(specs, spec)
	}
	return specs, nil
}

// executable is envd-init's own path. As PID 1 it may run before /proc is
// mounted, where os.Executable cannot read /proc/self/exe: argv[0] (a path,
// or a name on PATH) still says where the bundle is.
func executable() (string, error) {
	if exe, err := os.Executable(); err == nil {
		return exe, nil
	}
	exe, err := exec.LookPath(os.Args[0])
	if err != nil {
		return "", err
	}
	return filepath.Abs(exe)
}

func run(cfg Config, log *zap.Logger, export *logexport.Exporter, sys *sysinit.System) error {
	if err := reaper.MakeSubreaper(); err != nil {
		return err
	}
	rp := reaper.New(log.Named("reaper"))
	defer rp.Close()

	// envd-init owns the cgroup layout; envd-proc opens the same groups.
	cg := cgroups.Setup(cfg.CgroupRoot, !cfg.NoCgroups, log.Named("cgroups"))
	defer cg.Close()
	specs, err := pluginSpecs(cfg, cg)
	if err != nil {
		return err
	}
	// User processes outlive envd-proc: their fds and statuses are kept here.
	fdv := vault.New(log.Named("vault"))
	defer fdv.Close()
	rp.OnOrphan(fdv.Reaped)
	for i := range specs {
		if specs[i].Name == contract.Proc {
			specs[i].Vault = fdv
		}
	}
	store := state.New(&controlpb.Config{
		Flavor:         string(cfg.Flavor),
		IsNotFc:        cfg.IsNotFC,
		Cgroups:        &controlpb.CgroupConfig{Enabled: !cfg.NoCgroups, Root: cfg.CgroupRoot},
		ReservedPorts:  []uint32{uint32(cfg.Port)},
		ForwardAddress: "169.254.0.21",
	})
	// A plugin (re)start is work for envd-init's idle trim; the front door
	// that owns the trim is built below, and plugins start before it.
	var trimDoor atomic.Pointer[frontdoor.Server]
	sup := supervisor.New(log.Named("supervisor"), rp, store, specs, supervisor.Options{SocketDir: socketDir(log), WatchFiles: true,
		OnWork: func() {
			if d := trimDoor.Load(); d != nil {
				d.Touch()
			}
		}})

	ln, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(cfg.Port)))
	if err != nil {
		return fmt.Errorf("listen on port %d: %w", cfg.Port, err)
	}
	// Before the first plugin starts: children inherit oom_score_adj.
	if err := oom.Protect(0); err != nil {
		log.Warn("cannot protect envd from the OOM killer", zap.Error(err))
	}
	// Plugins take the longest to come up: start them before anything else.
	sup.Start()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	sampler := metrics.NewSampler(log.Named("metrics"), time.Second, metrics.WithMemCache(cfg.Flavor == state.FlavorE2B))
	go sampler.Run(ctx)
	var mmdsClient *mmds.Client
	var onMMDS func(*mmds.Metadata)
	if !cfg.IsNotFC {
		mmdsClient = mmds.NewClient(cfg.MMDSAddr, log.Named("mmds"), mmds.WithRunner(rp.Output))
	}
	if export != nil {
		go export.Run(ctx)
		onMMDS = func(md *mmds.Metadata) {
			export.SetTarget(logexport.Target{Address: md.Address, InstanceID: md.InstanceID, EnvID: md.EnvID})
		}
	}
	var door *frontdoor.Server
	host := hostapi.New(hostapi.Options{
		Log: log.Named("hostapi"), Store: store, Plugins: sup, Version: Version, Commit: Commit,
		IsNotFC: cfg.IsNotFC, MMDS: mmdsClient, OnMMDS: onMMDS, Metrics: sampler,
		ResetConns: func() { door.CloseIdle() },
		Run:        rp.Output,
	})
	door = frontdoor.New(frontdoor.Options{
		Log:     log.Named("http"),
		Conn:    func(name string) grpcadapter.ConnFunc { return sup.Conn(name) },
		Socket:  sup.HTTPSocket,
		Handoff: sup.HandoffSocket,
		Streams: fdv,
		Host:    host,
		Users:   users.Default,
	})
	trimDoor.Store(door)
	host.Start(ctx)

	if cfg.Cmd != "" {
		go startCmd(ctx, log, sup, fdv, cfg.Cmd)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- door.Serve(ln) }()
	log.Info("envd-init serving", zap.Int("port", cfg.Port), zap.String("version", Version),
		zap.String("flavor", string(cfg.Flavor)), zap.Int("pid", os.Getpid()))

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, append(sys.Signals(), syscall.SIGTERM, syscall.SIGINT)...)
	select {
	case s := <-sig:
		log.Info("stopping", zap.Stringer("signal", s))
		sys.Requested(s)
	case err := <-serveErr:
		if err != nil {
			log.Error("serve failed", zap.Error(err))
		}
	}
	// User work first: ending user processes and watches is what ends the
	// streams the front door then waits for, while the plugins still serve
	// their last events (a process's end); then the plugins.
	stopCtx, stopCancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer stopCancel()
	sup.Shutdown(stopCtx)
	doorCtx, doorCancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer doorCancel()
	_ = door.Shutdown(doorCtx)
	sup.Stop(stopCtx)
	host.Close()
	return nil
}

// socketDir is where envd's private Unix sockets live: not /tmp, which a
// sandbox user may wipe (rm -rf /tmp/*) and so cut envd-init off from its
// plugins for good.
func socketDir(log *zap.Logger) string {
	const dir = "/run/envd"
	if err := os.MkdirAll(dir, 0o700); err != nil {
		log.Warn("no private socket directory; using the temp dir", zap.String("dir", dir), zap.Error(err))
		return ""
	}
	return dir
}

// startCmd runs --cmd through envd-proc once it is up, like Wrenn-Go's
// envd: bash -l -c as root, tag startCmd, visible in List.
func startCmd(ctx context.Context, log *zap.Logger, sup *supervisor.Supervisor, streams grpcadapter.StreamRegistry, cmd string) {
	readyCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := sup.Ready(readyCtx); err != nil {
		log.Error("--cmd not started", zap.Error(err))
		return
	}
	proc := &grpcadapter.ProcessClient{Plugin: contract.Proc, Conn: sup.Conn(contract.Proc), Streams: streams}
	tag, cwd := "startCmd", "/home/user"
	if _, err := os.Stat(cwd); err != nil {
		cwd = "/"
	}
	req := &procpb.StartRequest{Tag: &tag, Process: &procpb.ProcessConfig{
		Cmd: "/bin/bash", Args: []string{"-l", "-c", cmd}, Cwd: &cwd,
	}}
	started := false
	// As root (WIRE §10), whatever default user an /init set meanwhile.
	ctx = callinfo.With(ctx, callinfo.Info{User: "root"})
	err := proc.Start(ctx, req, func(res *procpb.StartResponse) error {
		if s := res.GetEvent().GetStart(); s != nil && !started {
			started = true
			log.Info("--cmd started", zap.Uint32("pid", s.GetPid()))
		}
		if e := res.GetEvent().GetEnd(); e != nil {
			log.Info("--cmd ended", zap.String("status", e.GetStatus()))
		}
		return nil
	})
	if err != nil {
		log.Error("--cmd failed", zap.Error(err))
	}
}
