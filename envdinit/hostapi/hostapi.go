// Package hostapi is the part of envd-init that the host side drives
// (WIRE.md §4.1, §7, §8, §9); it runs in envd-init. It owns /health,
// /metrics, /envs, /init, /snapshot/prepare and the post-restore recovery, the
// access-token gate and the /files URL signatures, and the flavor differences
// of those endpoints (docs/compatibility.md).
package hostapi

import (
	"context"
	"encoding/json"
	"github.com/envd-project/envd/envdinit/reaper"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	controlpb "github.com/envd-project/envd/gen/control"
	"go.uber.org/zap"

	"github.com/envd-project/envd/envdinit/clock"
	"github.com/envd-project/envd/envdinit/metrics"
	"github.com/envd-project/envd/envdinit/mmds"
	"github.com/envd-project/envd/envdinit/state"
)

// Plugins is implemented by envd-init's supervisor.
type Plugins interface {
	// SnapshotPrepare makes every plugin quiesce (envd-net stops forwarding).
	SnapshotPrepare(ctx context.Context) error
	// SnapshotRestored makes every plugin recover (envd-net restarts forwarding).
	SnapshotRestored(ctx context.Context) error
}

// Options configures the API. Zero values get the production defaults.
type Options struct {
	Log     *zap.Logger
	Store   *state.Store
	Plugins Plugins
	Version string
	Commit  string
	IsNotFC bool
	// MMDS is nil with --isnotfc.
	MMDS *mmds.Client
	// OnMMDS, if set, gets each metadata MMDS serves (the log export
	// learns its collector from it).
	OnMMDS  func(*mmds.Metadata)
	Metrics *metrics.Sampler
	// ResetConns closes the front door's idle keep-alive connections
	// (prepare) and the connections left from before the snapshot (recovery).
	ResetConns func()

	// EtcHosts is the hosts file the hyperloop entry goes to (/etc/hosts).
	EtcHosts string
	// RunDir holds the sandbox identity files (the flavor's run dir).
	RunDir string
	// Clock is stepped by /init in the E2B flavor (clock.System; the Wrenn
	// flavor never steps the clock, whatever is set here).
	Clock clock.Clock
	// CABundle is the system bundle caBundle is appended to
	// (/etc/ssl/certs/ca-certificates.crt); CACertDir receives a copy as
	// <flavor>-ca.crt (/usr/local/share/ca-certificates).
	CABundle  string
	CACertDir string
	// MountTimeout bounds all NFS mounts of one /init (10 s).
	MountTimeout time.Duration
	// Run runs commands (mount, umount); envd-init passes its reaper's,
	// so no exit status is reaped twice. Default: plain os/exec (tests).
	Run reaper.RunFunc
	// RepollTimeout bounds the MMDS re-poll after /init (60 s).
	RepollTimeout time.Duration
	// PrepareTimeout bounds the plugins' quiesce in /snapshot/prepare (2.5 s:
	// the Wrenn host agent gives the whole call 3 s).
	PrepareTimeout time.Duration
	// RecoveryTimeout bounds the plugins' recovery after a restore (10 s).
	RecoveryTimeout time.Duration
	// Now is the time signature expirations are checked against.
	Now func() time.Time
}

// API serves the host-facing endpoints. Create it with New.
type API struct {
	opts   Options
	log    *zap.Logger
	store  *state.Store
	flavor state.Flavor

	initSem chan struct{} // serializes /init

	lifeMu        sync.Mutex // prepare vs recovery
	needsRecovery atomic.Bool

	pollMu     sync.Mutex
	pollCancel context.CancelFunc

	hostsMu sync.Mutex
	ca      caInstaller
	nfs     nfsMounter

	bgCtx    context.Context
	bgCancel context.CancelFunc
	bg       sync.WaitGroup
}

// New builds the API; call Start to publish the sandbox identity and Close
// to stop its background work.
func New(opts Options) *API {
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	if opts.Store == nil {
		opts.Store = state.New(&controlpb.Config{})
	}
	flavor := opts.Store.Flavor()
	if flavor != state.FlavorE2B {
		flavor = state.FlavorWrenn
	}
	if opts.EtcHosts == "" {
		opts.EtcHosts = "/etc/hosts"
	}
	if opts.RunDir == "" {
		opts.RunDir = flavor.RunDir()
	}
	if opts.Clock == nil {
		opts.Clock = clock.System{}
	}
	if opts.CABundle == "" {
		opts.CABundle = "/etc/ssl/certs/ca-certificates.crt"
	}
	if opts.CACertDir == "" {
		opts.CACertDir = "/usr/local/share/ca-certificates"
	}
	if opts.Run == nil {
		opts.Run = reaper.ExecOutput
	}
	if opts.MountTimeout <= 0 {
		opts.MountTimeout = 10 * time.Second
	}
	if opts.RepollTimeout <= 0 {
		opts.RepollTimeout = 60 * time.Second
	}
	if opts.PrepareTimeout <= 0 {
		opts.PrepareTimeout = 2500 * time.Millisecond
	}
	if opts.RecoveryTimeout <= 0 {
		opts.RecoveryTimeout = 10 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	a := &API{
		opts:    opts,
		log:     opts.Log,
		store:   opts.Store,
		flavor:  flavor,
		initSem: make(chan struct{}, 1),
		ca: caInstaller{
			bundlePath: opts.CABundle,
			certPath:   filepath.Join(opts.CACertDir, string(flavor)+"-ca.crt"),
		},
		nfs: nfsMounter{log: opts.Log, run: opts.Run, mounted: map[string]string{}},
	}
	a.bgCtx, a.bgCancel = context.WithCancel(context.Background())
	return a
}

// Start writes the run-dir marker (.<P>SANDBOX) and, in a Firecracker VM,
// starts the startup MMDS poll (no deadline). Background work stops when
// ctx ends or on Close.
func (a *API) Start(ctx context.Context) {
	context.AfterFunc(ctx, a.bgCancel)
	isFC := !a.opts.IsNotFC
	if err := mmds.MarkSandbox(a.store, a.opts.RunDir, isFC); err != nil {
		a.log.Error("cannot write the sandbox marker", zap.Error(err))
	}
	a.startPoll(0)
}

// Close stops background work (MMDS polls, hyperloop updates) and waits for it.
func (a *API) Close() {
	a.bgCancel()
	a.bg.Wait()
}

// NeedsRecovery reports whether a /snapshot/prepare has not been followed
// by a recovery yet.
func (a *API) NeedsRecovery() bool { return a.needsRecovery.Load() }

// go runs fn in the background group unless the API is closed.
func (a *API) goBG(fn func(ctx context.Context)) {
	if a.bgCtx.Err() != nil {
		return
	}
	a.bg.Add(1)
	go func() {
		defer a.bg.Done()
		fn(a.bgCtx)
	}()
}

// startPoll (re)starts the MMDS poll, replacing one still running; timeout
// 0 means no deadline. It does nothing outside Firecracker.
func (a *API) startPoll(timeout time.Duration) {
	if a.opts.MMDS == nil || a.opts.IsNotFC {
		return
	}
	a.pollMu.Lock()
	defer a.pollMu.Unlock()
	if a.pollCancel != nil {
		a.pollCancel()
	}
	var ctx context.Context
	var cancel context.CancelFunc
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(a.bgCtx, timeout)
	} else {
		ctx, cancel = context.WithCancel(a.bgCtx)
	}
	a.pollCancel = cancel
	a.goBG(func(context.Context) {
		defer cancel()
		md, err := a.opts.MMDS.Refresh(ctx, a.store, a.opts.RunDir)
		if err != nil && ctx.Err() == nil {
			a.log.Error("mmds identity not published", zap.Error(err))
		}
		if md != nil && a.opts.OnMMDS != nil {
			a.opts.OnMMDS(md)
		}
	})
}

func (a *API) stopPoll() {
	a.pollMu.Lock()
	defer a.pollMu.Unlock()
	if a.pollCancel != nil {
		a.pollCancel()
		a.pollCancel = nil
	}
}

// Register mounts the host endpoints on mux.
func (a *API) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /health", a.health)
	mux.HandleFunc("GET /metrics", a.metrics)
	mux.HandleFunc("GET /envs", a.envs)
	mux.HandleFunc("POST /init", a.postInit)
	mux.HandleFunc("POST /snapshot/prepare", a.snapshotPrepare)
}

// health answers the flavor's liveness shape (§7.1); the first call after
// a /snapshot/prepare runs the post-restore recovery before answering.
func (a *API) health(w http.ResponseWriter, r *http.Request) {
	a.recoverIfNeeded(r.Context(), "health")
	w.Header().Set("Cache-Control", "no-store")
	if a.flavor == state.FlavorE2B {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Version string `json:"version"`
	}{a.opts.Version})
}

func (a *API) metrics(w http.ResponseWriter, r *http.Request) {
	if a.opts.Metrics == nil {
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	a.opts.Metrics.Handler().ServeHTTP(w, r)
}

func (a *API) envs(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, a.store.Env())
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}
