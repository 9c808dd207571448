package grpcadapter

import (
	"context"

	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/plugins/pluginkit/callinfo"
	"github.com/envd-project/envd/plugins/pluginkit/service"
	"google.golang.org/grpc"
)

// ProcessServer serves a service.Process over gRPC.
type ProcessServer struct {
	procpb.UnimplementedProcessServer
	svc service.Process
}

// NewProcessServer wraps svc.
func NewProcessServer(svc service.Process) *ProcessServer { return &ProcessServer{svc: svc} }

func (s *ProcessServer) List(ctx context.Context, req *procpb.ListRequest) (*procpb.ListResponse, error) {
	res, err := s.svc.List(callinfo.FromIncoming(ctx), req)
	return res, toStatus(err)
}

func (s *ProcessServer) Connect(req *procpb.ConnectRequest, stream grpc.ServerStreamingServer[procpb.ConnectResponse]) error {
	return toStatus(s.svc.Connect(callinfo.FromIncoming(stream.Context()), req, stream.Send))
}

func (s *ProcessServer) Start(req *procpb.StartRequest, stream grpc.ServerStreamingServer[procpb.StartResponse]) error {
	return toStatus(s.svc.Start(callinfo.FromIncoming(stream.Context()), req, stream.Send))
}

func (s *ProcessServer) Update(ctx context.Context, req *procpb.UpdateRequest) (*procpb.UpdateResponse, error) {
	res, err := s.svc.Update(callinfo.FromIncoming(ctx), req)
	return res, toStatus(err)
}

func (s *ProcessServer) StreamInput(stream grpc.ClientStreamingServer[procpb.StreamInputRequest, procpb.StreamInputResponse]) error {
	res, err := s.svc.StreamInput(callinfo.FromIncoming(stream.Context()), stream.Recv)
	if err != nil {
		return toStatus(err)
	}
	return stream.SendAndClose(res)
}

func (s *ProcessServer) SendInput(ctx context.Context, req *procpb.SendInputRequest) (*procpb.SendInputResponse, error) {
	res, err := s.svc.SendInput(callinfo.FromIncoming(ctx), req)
	return res, toStatus(err)
}

func (s *ProcessServer) SendSignal(ctx context.Context, req *procpb.SendSignalRequest) (*procpb.SendSignalResponse, error) {
	res, err := s.svc.SendSignal(callinfo.FromIncoming(ctx), req)
	return res, toStatus(err)
}

func (s *ProcessServer) CloseStdin(ctx context.Context, req *procpb.CloseStdinRequest) (*procpb.CloseStdinResponse, error) {
	res, err := s.svc.CloseStdin(callinfo.FromIncoming(ctx), req)
	return res, toStatus(err)
}

// ConnFunc returns a connection to the plugin, waiting a bounded time while
// it is starting; its error is already a *connect.Error. A non-nil stale
// connection failed to reach the plugin: the call waits for a different one
// (the plugin's replacement).
type ConnFunc func(ctx context.Context, stale grpc.ClientConnInterface) (grpc.ClientConnInterface, error)

// ProcessClient is a service.Process that calls the plugin named by Plugin.
type ProcessClient struct {
	Plugin string
	Conn   ConnFunc
	// Streams, when set, counts the Start and Connect streams held open
	// per process, for their re-attachment after a plugin restart.
	Streams StreamRegistry
}

var _ service.Process = (*ProcessClient)(nil)

func (c *ProcessClient) client(ctx context.Context, stale grpc.ClientConnInterface) (procpb.ProcessClient, grpc.ClientConnInterface, error) {
	conn, err := c.Conn(ctx, stale)
	if err != nil {
		return nil, nil, err
	}
	return procpb.NewProcessClient(conn), conn, nil
}

func (c *ProcessClient) List(ctx context.Context, req *procpb.ListRequest) (*procpb.ListResponse, error) {
	return idempotent(ctx, c, req, procpb.ProcessClient.List)
}

func (c *ProcessClient) Update(ctx context.Context, req *procpb.UpdateRequest) (*procpb.UpdateResponse, error) {
	return idempotent(ctx, c, req, procpb.ProcessClient.Update)
}

func (c *ProcessClient) SendInput(ctx context.Context, req *procpb.SendInputRequest) (*procpb.SendInputResponse, error) {
	return unary(ctx, c.Plugin, c.client, req, procpb.ProcessClient.SendInput)
}

func (c *ProcessClient) SendSignal(ctx context.Context, req *procpb.SendSignalRequest) (*procpb.SendSignalResponse, error) {
	return unary(ctx, c.Plugin, c.client, req, procpb.ProcessClient.SendSignal)
}

func (c *ProcessClient) CloseStdin(ctx context.Context, req *procpb.CloseStdinRequest) (*procpb.CloseStdinResponse, error) {
	return idempotent(ctx, c, req, procpb.ProcessClient.CloseStdin)
}

func (c *ProcessClient) Start(ctx context.Context, req *procpb.StartRequest, send service.Send[procpb.StartResponse]) error {
	return c.startStream(ctx, req, send)
}

func (c *ProcessClient) Connect(ctx context.Context, req *procpb.ConnectRequest, send service.Send[procpb.ConnectResponse]) error {
	return c.connectStream(ctx, req, send)
}

func (c *ProcessClient) StreamInput(ctx context.Context, recv service.Recv[procpb.StreamInputRequest]) (*procpb.StreamInputResponse, error) {
	return c.streamInput(ctx, recv)
}
