// Package contract is the agreement between envd-init and its plugins, so it
// runs in every process: the go-plugin handshake, the plugin names, the one
// go-plugin Plugin every envd plugin exposes (a gRPC server carrying its
// public service and the control API), the gRPC options of the hop, and the
// control service glue.
package contract

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	controlpb "github.com/envd-project/envd/gen/control"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/mem"
)

// Plugin names; also the file names of their executables in the bundle.
const (
	Proc = "envd-proc"
	FS   = "envd-fs"
	Net  = "envd-net"
)

// DispenseName is the single entry of every plugin's go-plugin PluginSet.
const DispenseName = "envd"

// Handshake keeps a plugin binary from being run as a plugin by accident and
// envd-init from talking to a plugin of another protocol version.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "ENVD_PLUGIN_COOKIE",
	MagicCookieValue: "f0d3c1b2-envd-plugin-v1",
}

// MaxMessageSize bounds one gRPC message across the hop (both directions);
// process input and file events can exceed gRPC's 4 MiB default.
const MaxMessageSize = 64 << 20

// MaxHeaderListSize is what each side of the hop advertises as the most
// header bytes (metadata, status, trailers) it accepts on one call. grpc-go
// checks a peer's advertised limit before it sends, so a call whose
// trailer would be larger fails alone (RST_STREAM, internal) instead of
// reaching the peer's HPACK decoder, where an oversized string is a
// COMPRESSION_ERROR that tears down the connection every other call
// shares. Messages are bounded far below it (errmsg.Max); this is the
// guard for whatever escapes that.
const MaxHeaderListSize = 1 << 20

// The hop is a local Unix socket: a fixed, large flow-control window
// needs no bandwidth-delay probing (grpc-go pings on every data frame to
// size its window otherwise), and one shared write buffer per connection
// saves an allocation per stream.
//
// The stream window is what the receiving side may be made to hold for
// one stream whose reader is slower than its writer: envd-init, for
// process output on its way to a slow client, held up to its 4 MiB (the
// SDK's suite peaked there). 512 KiB keeps a stream at full speed on a
// Unix socket (a window update every 128 KiB read); the connection's
// window is credited as bytes arrive, not as a stream reads them, so it
// stays large and never holds memory.
const (
	window       = 4 << 20
	streamWindow = 512 << 10
)

// hopBuffers is the pool both sides of the hop take message buffers from
// (marshaling what they send, reading what they receive). grpc-go's default
// tiers are 256 B, 4, 16, 32 KiB and 1 MiB, and a process output event
// carries a 32 KiB pipe read (WIRE §5.1) plus a few bytes of framing: every
// such message took a 1 MiB buffer, which grpc-go also zeroes whole on each
// reuse (a 16 KiB terminal read took 32 KiB). The 33 and 17 KiB tiers fit
// them (tested); 256 KiB serves what lies between. It is the process's
// default pool: grpc-go's proto codec takes its buffers from the default
// pool whatever a connection's options say, and the hop is the only gRPC
// in the tree.
var hopBuffers = mem.NewTieredBufferPool(256, 4<<10, 16<<10, 17<<10, 32<<10, 33<<10, 256<<10, 1<<20)

func init() { experimental.SetDefaultBufferPool(hopBuffers) }

// DialOptions are envd-init's options for the gRPC connection to a plugin.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageSize), grpc.MaxCallSendMsgSize(MaxMessageSize)),
		grpc.WithInitialWindowSize(streamWindow),
		grpc.WithInitialConnWindowSize(window),
		grpc.WithSharedWriteBuffer(true),
		grpc.WithMaxHeaderListSize(MaxHeaderListSize),
	}
}

// ServerOptions are a plugin's options for its gRPC server.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxMessageSize), grpc.MaxSendMsgSize(MaxMessageSize),
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(window),
		grpc.SharedWriteBuffer(true),
		grpc.MaxHeaderListSize(MaxHeaderListSize),
	}
}

// Controllable is what every plugin does for the control API.
type Controllable interface {
	// Configure applies the newest sandbox defaults.
	Configure(ctx context.Context, cfg *controlpb.Config) error
	SnapshotPrepare(ctx context.Context) error
	SnapshotRestored(ctx context.Context) error
	// Shutdown ends the plugin's user-visible work before it is stopped.
	Shutdown(ctx context.Context) error
	// Handover prepares a hot-swap (see the control API's Handover): the
	// plugin passes its work on and exits once its calls have finished. A
	// plugin that carries state to its successor answers it (and the
	// number of fds it sent over its carry socket).
	Handover(ctx context.Context) (*controlpb.HandoverResponse, error)
	// TakeOver gives the plugin what its predecessor handed over, before
	// it serves.
	TakeOver(ctx context.Context, req *controlpb.TakeOverRequest) error
	// HTTPSocket is the Unix socket of the plugin's plain HTTP server, or "".
	HTTPSocket() string
	// HandoffSocket takes whole client connections for that server, or "".
	HandoffSocket() string
}

// GRPCPlugin is the go-plugin Plugin of every envd plugin. On the plugin
// side Register adds the services; on envd-init's side the dispensed value
// is the *grpc.ClientConn itself, on which typed clients are built.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Register func(s *grpc.Server)
}

// GRPCServer implements plugin.GRPCPlugin.
func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	if p.Register == nil {
		return fmt.Errorf("plugin has no services to register")
	}
	p.Register(s)
	return nil
}

// GRPCClient implements plugin.GRPCPlugin.
func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return c, nil
}

// ControlServer serves the control API for a Controllable.
type ControlServer struct {
	controlpb.UnimplementedControlServer
	Name   string
	Target Controllable

	configMu   sync.Mutex    // one Configure at a time: check, apply, record
	generation atomic.Uint64 // of the newest config applied (read by Health)
}

func (s *ControlServer) Configure(ctx context.Context, cfg *controlpb.Config) (*controlpb.ConfigureResponse, error) {
	// Pushes may cross (a start-time push and a change notification):
	// the newest generation wins, which needs the check and the apply to
	// be one step; an older push arriving later is ignored.
	s.configMu.Lock()
	defer s.configMu.Unlock()
	if cfg.GetGeneration() < s.generation.Load() {
		return &controlpb.ConfigureResponse{}, nil
	}
	if err := s.Target.Configure(ctx, cfg); err != nil {
		return nil, fmt.Errorf("%s: configure: %w", s.Name, err)
	}
	s.generation.Store(cfg.GetGeneration())
	return &controlpb.ConfigureResponse{}, nil
}

func (s *ControlServer) Health(context.Context, *controlpb.HealthRequest) (*controlpb.HealthResponse, error) {
	return &controlpb.HealthResponse{
		Plugin:           s.Name,
		Pid:              uint32(os.Getpid()),
		HttpSocket:       s.Target.HTTPSocket(),
		HandoffSocket:    s.Target.HandoffSocket(),
		ConfigGeneration: s.generation.Load(),
	}, nil
}

func (s *ControlServer) SnapshotPrepare(ctx context.Context, _ *controlpb.SnapshotPrepareRequest) (*controlpb.SnapshotPrepareResponse, error) {
	if err := s.Target.SnapshotPrepare(ctx); err != nil {
		return nil, fmt.Errorf("%s: snapshot prepare: %w", s.Name, err)
	}
	return &controlpb.SnapshotPrepareResponse{}, nil
}

func (s *ControlServer) SnapshotRestored(ctx context.Context, _ *controlpb.SnapshotRestoredRequest) (*controlpb.SnapshotRestoredResponse, error) {
	if err := s.Target.SnapshotRestored(ctx); err != nil {
		return nil, fmt.Errorf("%s: snapshot restored: %w", s.Name, err)
	}
	return &controlpb.SnapshotRestoredResponse{}, nil
}

func (s *ControlServer) Shutdown(ctx context.Context, _ *controlpb.ShutdownRequest) (*controlpb.ShutdownResponse, error) {
	if err := s.Target.Shutdown(ctx); err != nil {
		return nil, fmt.Errorf("%s: shutdown: %w", s.Name, err)
	}
	return &controlpb.ShutdownResponse{}, nil
}

func (s *ControlServer) Handover(ctx context.Context, _ *controlpb.HandoverRequest) (*controlpb.HandoverResponse, error) {
	res, err := s.Target.Handover(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: handover: %w", s.Name, err)
	}
	if res == nil {
		res = &controlpb.HandoverResponse{}
	}
	return res, nil
}

func (s *ControlServer) TakeOver(ctx context.Context, req *controlpb.TakeOverRequest) (*controlpb.TakeOverResponse, error) {
	if err := s.Target.TakeOver(ctx, req); err != nil {
		return nil, fmt.Errorf("%s: take over: %w", s.Name, err)
	}
	return &controlpb.TakeOverResponse{}, nil
}
