package hostapi

import (
	"context"
	"net/http"
	"runtime"
	"runtime/debug"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// snapshotPrepare quiesces envd before the VM is paused (§7.9, §9.7):
// plugins stop their pollers and forwarders, idle connections are closed,
// dirty pages reach the disk and freed heap goes back to the host. The next
// /health or applied /init runs the recovery.
func (a *API) snapshotPrepare(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	a.lifeMu.Lock()
	// Set first: even a prepare that times out half-way must be recovered from.
	a.needsRecovery.Store(true)
	a.stopPoll()
	if a.opts.Plugins != nil {
		ctx, cancel := context.WithTimeout(r.Context(), a.opts.PrepareTimeout)
		if err := a.opts.Plugins.SnapshotPrepare(ctx); err != nil {
			a.log.Error("snapshot prepare: plugins did not quiesce", zap.Error(err))
		}
		cancel()
	}
	a.lifeMu.Unlock()
	if a.opts.ResetConns != nil {
		a.opts.ResetConns()
	}
	unix.Sync()
	runtime.GC()
	debug.FreeOSMemory()
	a.log.Info("snapshot prepared", zap.Duration("took", time.Since(start)))
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}

// recoverIfNeeded runs the post-restore recovery once after a prepare:
// connections from before the snapshot are dropped, plugins recover (port
// forwarding restarts) and the MMDS identity is polled again. Concurrent
// callers wait for the one running it. The clock is not checked here: only
// an E2B /init carries a reference time, and applyInit steps the clock
// before calling this.
func (a *API) recoverIfNeeded(ctx context.Context, trigger string) {
	if !a.needsRecovery.Load() {
		return
	}
	a.lifeMu.Lock()
	defer a.lifeMu.Unlock()
	if !a.needsRecovery.Load() {
		return
	}
	start := time.Now()
	if a.opts.ResetConns != nil {
		a.opts.ResetConns()
	}
	if a.opts.Plugins != nil {
		// The caller going away must not leave plugins half-recovered.
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.opts.RecoveryTimeout)
		if err := a.opts.Plugins.SnapshotRestored(pctx); err != nil {
			// Not retried: a plugin that failed is restarted by the
			// supervisor and starts from the current config anyway.
			a.log.Error("post-restore recovery: plugins did not recover", zap.Error(err))
		}
		cancel()
	}
	a.startPoll(a.opts.RepollTimeout)
	a.needsRecovery.Store(false)
	a.log.Info("post-restore recovery done", zap.String("trigger", trigger), zap.Duration("took", time.Since(start)))
}
