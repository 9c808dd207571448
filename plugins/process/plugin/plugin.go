// Package plugin (runs in envd-proc) makes the process service the envd-proc
// plugin: control API, cgroup setup, gRPC registration and standalone mount.
package plugin

import (
	"context"
	"net/http"

	"connectrpc.com/connect"
	controlpb "github.com/envd-project/envd/gen/control"
	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/internal/cgroups"
	"github.com/envd-project/envd/plugins/pluginkit/connectadapter"
	"github.com/envd-project/envd/plugins/pluginkit/contract"
	"github.com/envd-project/envd/plugins/pluginkit/defaults"
	"github.com/envd-project/envd/plugins/pluginkit/fdvault"
	"github.com/envd-project/envd/plugins/pluginkit/grpcadapter"
	"github.com/envd-project/envd/plugins/pluginkit/pluginmain"
	"github.com/envd-project/envd/plugins/process"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Spec is the envd-proc plugin.
var Spec = pluginmain.Spec{Name: contract.Proc, New: build}

type subsystem struct {
	svc  *process.Service
	defs *defaults.Store
	cg   cgroups.Manager
}

func build(env pluginmain.Env) (pluginmain.Subsystem, error) {
	cg := cgroups.Setup(env.CgroupRoot, !env.NoCgroups, env.Log)
	svc := process.New(env.Log, env.Defaults, env.Users, cg)
	if env.Trim != nil {
		svc.OnForget(env.Trim.Touch)
	}
	// Under envd-init: take over what a previous envd-proc left running,
	// before serving, so the first List already shows it.
	if !env.Standalone {
		v, err := fdvault.Open(env.Log)
		if err != nil {
			env.Log.Warn("no fd vault: user processes will not outlive this envd-proc", zap.Error(err))
		}
		if err := svc.Adopt(v); err != nil {
			env.Log.Error("adopting processes failed", zap.Error(err))
		}
	}
	return &subsystem{svc: svc, defs: env.Defaults, cg: cg}, nil
}

func (s *subsystem) Configure(_ context.Context, cfg *controlpb.Config) error {
	s.defs.Set(cfg)
	return nil
}

func (s *subsystem) SnapshotPrepare(ctx context.Context) error  { return s.svc.SnapshotPrepare(ctx) }
func (s *subsystem) SnapshotRestored(ctx context.Context) error { return s.svc.SnapshotRestored(ctx) }

func (s *subsystem) Shutdown(ctx context.Context) error {
	err := s.svc.Shutdown(ctx)
	_ = s.cg.Close()
	return err
}

// Handover passes every process on to the next envd-proc (hot-swap).
func (s *subsystem) Handover(ctx context.Context) error { return s.svc.Handover(ctx) }

func (s *subsystem) RegisterGRPC(srv *grpc.Server) {
	procpb.RegisterProcessServer(srv, grpcadapter.NewProcessServer(s.svc))
}

func (s *subsystem) Mount(mux *http.ServeMux, opts ...connect.HandlerOption) {
	mux.Handle(connectadapter.NewProcessHandler(s.svc, opts...))
}

func (s *subsystem) HTTPHandler() http.Handler { return nil }
