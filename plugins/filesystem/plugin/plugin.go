// Package plugin (runs in envd-fs) makes the filesystem service and /files the
// envd-fs plugin: control API, gRPC registration, standalone mount, and the
// HTTP handler that envd-init's handoff and proxy reach.
package plugin

import (
	"context"
	"net/http"
	"os"

	"connectrpc.com/connect"
	controlpb "github.com/envd-project/envd/gen/control"
	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/plugins/filesystem"
	"github.com/envd-project/envd/plugins/pluginkit/connectadapter"
	"github.com/envd-project/envd/plugins/pluginkit/contract"
	"github.com/envd-project/envd/plugins/pluginkit/defaults"
	"github.com/envd-project/envd/plugins/pluginkit/grpcadapter"
	"github.com/envd-project/envd/plugins/pluginkit/pluginmain"
	"google.golang.org/grpc"
)

// Spec is the envd-fs plugin.
var Spec = pluginmain.Spec{Name: contract.FS, New: build}

type subsystem struct {
	svc   *filesystem.Service
	files http.Handler
	defs  *defaults.Store
}

func build(env pluginmain.Env) (pluginmain.Subsystem, error) {
	return &subsystem{
		svc:   filesystem.New(env.Log, env.Defaults, env.Users),
		files: filesystem.NewFilesHandler(env.Log, env.Defaults, env.Users),
		defs:  env.Defaults,
	}, nil
}

func (s *subsystem) Configure(_ context.Context, cfg *controlpb.Config) error {
	s.defs.Set(cfg)
	return nil
}

func (s *subsystem) SnapshotPrepare(ctx context.Context) error  { return s.svc.SnapshotPrepare(ctx) }
func (s *subsystem) SnapshotRestored(ctx context.Context) error { return s.svc.SnapshotRestored(ctx) }
func (s *subsystem) Shutdown(ctx context.Context) error         { return s.svc.Shutdown(ctx) }

// Carry and Resume hand the polling watchers to the next envd-fs in a
// hot-swap (pluginmain.Carrier).
var _ pluginmain.Carrier = (*subsystem)(nil)

func (s *subsystem) Carry(ctx context.Context) ([]byte, []*os.File, error) { return s.svc.Carry(ctx) }
func (s *subsystem) Resume(ctx context.Context, state []byte, files []*os.File) error {
	return s.svc.Resume(ctx, state, files)
}

func (s *subsystem) RegisterGRPC(srv *grpc.Server) {
	fspb.RegisterFilesystemServer(srv, grpcadapter.NewFilesystemServer(s.svc))
}

func (s *subsystem) Mount(mux *http.ServeMux, opts ...connect.HandlerOption) {
	mux.Handle(connectadapter.NewFilesystemHandler(s.svc, opts...))
}

func (s *subsystem) HTTPHandler() http.Handler { return s.files }
