// Package connectadapter serves the service interfaces as Connect handlers:
// Connect (JSON and proto), gRPC and gRPC-Web with connect-go's default
// options, which is what the reference envd does (WIRE.md §2.1), plus the
// identity interceptor, a fast ListDir JSON codec and gzip at BestSpeed. It
// runs in envd-init (the front door, around the proxy clients), in envd-fs
// (connections handed over to it, around the real service) and in any plugin
// run standalone.
package connectadapter

import (
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"strings"

	"connectrpc.com/connect"
	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/gen/filesystem/filesystemconnect"
	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/gen/process/processconnect"
	"github.com/envd-project/envd/plugins/pluginkit/service"
)

// NewProcessHandler returns the path prefix and handler of process.Process.
func NewProcessHandler(svc service.Process, opts ...connect.HandlerOption) (string, http.Handler) {
	path, h := processconnect.NewProcessHandler(&process{svc}, withCodecs(opts)...)
	return path, zeroTimeoutIsNone(h)
}

// NewFilesystemHandler returns the path prefix and handler of filesystem.Filesystem.
func NewFilesystemHandler(svc service.Filesystem, opts ...connect.HandlerOption) (string, http.Handler) {
	path, h := filesystemconnect.NewFilesystemHandler(&filesystem{svc}, withCodecs(opts)...)
	return path, zeroTimeoutIsNone(h)
}

// zeroTimeoutIsNone drops a Connect-Timeout-Ms of 0: clients send it for
// "no limit" (the JS SDK's timeoutMs: 0 through connect-es), and WIRE §5.1
// and §11 treat it as no deadline, where connect-go would start the call
// with one that has already passed.
func zeroTimeoutIsNone(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if v := r.Header.Get(timeoutHeader); v != "" && strings.Trim(v, "0") == "" {
			r.Header.Del(timeoutHeader)
		}
		h.ServeHTTP(w, r)
	})
}

const timeoutHeader = "Connect-Timeout-Ms"

// withCodecs puts JSONCodecs and fast gzip first, so that a caller's own
// options still win.
func withCodecs(opts []connect.HandlerOption) []connect.HandlerOption {
	return append([]connect.HandlerOption{JSONCodecs(), fastGzip()}, opts...)
}

// fastGzip replaces connect-go's gzip (default level) with gzip at
// BestSpeed: a 10,000-entry listing (2 MB of JSON) compresses in a third
// of the time to about the same size, and any gzip reader decodes it. The
// name is removed first so that it is announced once.
func fastGzip() connect.HandlerOption {
	return connect.WithHandlerOptions(
		connect.WithCompression("gzip", nil, nil),
		connect.WithCompression("gzip",
			func() connect.Decompressor { return &gzip.Reader{} },
			func() connect.Compressor {
				w, _ := gzip.NewWriterLevel(io.Discard, gzip.BestSpeed)
				return w
			}),
	)
}

func unary[Req, Res any](ctx context.Context, req *connect.Request[Req],
	call func(context.Context, *Req) (*Res, error)) (*connect.Response[Res], error) {
	res, err := call(ctx, req.Msg)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(res), nil
}

type process struct{ svc service.Process }

func (p *process) List(ctx context.Context, req *connect.Request[procpb.ListRequest]) (*connect.Response[procpb.ListResponse], error) {
	return unary(ctx, req, p.svc.List)
}

func (p *process) Connect(ctx context.Context, req *connect.Request[procpb.ConnectRequest], stream *connect.ServerStream[procpb.ConnectResponse]) error {
	return p.svc.Connect(ctx, req.Msg, stream.Send)
}

func (p *process) Start(ctx context.Context, req *connect.Request[procpb.StartRequest], stream *connect.ServerStream[procpb.StartResponse]) error {
	return p.svc.Start(ctx, req.Msg, stream.Send)
}

func (p *process) Update(ctx context.Context, req *connect.Request[procpb.UpdateRequest]) (*connect.Response[procpb.UpdateResponse], error) {
	return unary(ctx, req, p.svc.Update)
}

func (p *process) StreamInput(ctx context.Context, stream *connect.ClientStream[procpb.StreamInputRequest]) (*connect.Response[procpb.StreamInputResponse], error) {
	res, err := p.svc.StreamInput(ctx, func() (*procpb.StreamInputRequest, error) {
		if stream.Receive() {
			return stream.Msg(), nil
		}
		if err := stream.Err(); err != nil {
			return nil, err
		}
		return nil, errEOF
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(res), nil
}

func (p *process) SendInput(ctx context.Context, req *connect.Request[procpb.SendInputRequest]) (*connect.Response[procpb.SendInputResponse], error) {
	return unary(ctx, req, p.svc.SendInput)
}

func (p *process) SendSignal(ctx context.Context, req *connect.Request[procpb.SendSignalRequest]) (*connect.Response[procpb.SendSignalResponse], error) {
	return unary(ctx, req, p.svc.SendSignal)
}

func (p *process) CloseStdin(ctx context.Context, req *connect.Request[procpb.CloseStdinRequest]) (*connect.Response[procpb.CloseStdinResponse], error) {
	return unary(ctx, req, p.svc.CloseStdin)
}

type filesystem struct{ svc service.Filesystem }

func (f *filesystem) Stat(ctx context.Context, req *connect.Request[fspb.StatRequest]) (*connect.Response[fspb.StatResponse], error) {
	return unary(ctx, req, f.svc.Stat)
}

func (f *filesystem) MakeDir(ctx context.Context, req *connect.Request[fspb.MakeDirRequest]) (*connect.Response[fspb.MakeDirResponse], error) {
	return unary(ctx, req, f.svc.MakeDir)
}

func (f *filesystem) Move(ctx context.Context, req *connect.Request[fspb.MoveRequest]) (*connect.Response[fspb.MoveResponse], error) {
	return unary(ctx, req, f.svc.Move)
}

func (f *filesystem) ListDir(ctx context.Context, req *connect.Request[fspb.ListDirRequest]) (*connect.Response[fspb.ListDirResponse], error) {
	return unary(ctx, req, f.svc.ListDir)
}

func (f *filesystem) Remove(ctx context.Context, req *connect.Request[fspb.RemoveRequest]) (*connect.Response[fspb.RemoveResponse], error) {
	return unary(ctx, req, f.svc.Remove)
}

func (f *filesystem) WatchDir(ctx context.Context, req *connect.Request[fspb.WatchDirRequest], stream *connect.ServerStream[fspb.WatchDirResponse]) error {
	return f.svc.WatchDir(ctx, req.Msg, stream.Send)
}

func (f *filesystem) CreateWatcher(ctx context.Context, req *connect.Request[fspb.CreateWatcherRequest]) (*connect.Response[fspb.CreateWatcherResponse], error) {
	return unary(ctx, req, f.svc.CreateWatcher)
}

func (f *filesystem) GetWatcherEvents(ctx context.Context, req *connect.Request[fspb.GetWatcherEventsRequest]) (*connect.Response[fspb.GetWatcherEventsResponse], error) {
	return unary(ctx, req, f.svc.GetWatcherEvents)
}

func (f *filesystem) RemoveWatcher(ctx context.Context, req *connect.Request[fspb.RemoveWatcherRequest]) (*connect.Response[fspb.RemoveWatcherResponse], error) {
	return unary(ctx, req, f.svc.RemoveWatcher)
}
