// Package plugin (runs in envd-net) makes the port subsystem the envd-net
// plugin. It serves no public RPC: envd-init drives it through the control API
// (config, snapshot prepare and restore).
package plugin

import (
	"context"
	"fmt"
	"net/http"
	"runtime/debug"

	"connectrpc.com/connect"
	controlpb "github.com/envd-project/envd/gen/control"
	"github.com/envd-project/envd/plugins/pluginkit/contract"
	"github.com/envd-project/envd/plugins/pluginkit/pluginmain"
	"github.com/envd-project/envd/plugins/ports"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Spec is the envd-net plugin.
var Spec = pluginmain.Spec{Name: contract.Net, New: build}

type subsystem struct {
	log  *zap.Logger
	mgr  *ports.Manager
	stop context.CancelFunc
	done chan struct{}
}

func build(env pluginmain.Env) (pluginmain.Subsystem, error) {
	s := &subsystem{log: env.Log, mgr: ports.New(env.Log, ports.Options{}), done: make(chan struct{})}
	ctx, cancel := context.WithCancel(env.Run)
	s.stop = cancel
	go func() {
		defer close(s.done)
		if err := s.mgr.Run(ctx); err != nil && ctx.Err() == nil {
			env.Log.Error("port forwarding stopped", zap.Error(err))
		}
	}()
	return s, nil
}

func (s *subsystem) Configure(_ context.Context, cfg *controlpb.Config) error {
	opts, err := ports.OptionsFromConfig(cfg, ports.Options{})
	if err != nil {
		return fmt.Errorf("port forwarding config: %w", err)
	}
	s.mgr.SetOptions(opts)
	return nil
}

func (s *subsystem) SnapshotPrepare(context.Context) error {
	s.mgr.Pause()
	// Nothing of the forwards needs to survive; go into the snapshot small.
	debug.FreeOSMemory()
	return nil
}

// Handover (hot-swap) gives the forwarded ports up at once, so that the
// replacement binds them on its first scan instead of after this process
// has drained and exited.
func (s *subsystem) Handover(context.Context) error {
	s.mgr.Pause()
	return nil
}

func (s *subsystem) SnapshotRestored(context.Context) error {
	s.mgr.Resume()
	return nil
}

func (s *subsystem) Shutdown(ctx context.Context) error {
	s.stop()
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *subsystem) RegisterGRPC(*grpc.Server) {}

func (s *subsystem) Mount(*http.ServeMux, ...connect.HandlerOption) {}

func (s *subsystem) HTTPHandler() http.Handler { return nil }
