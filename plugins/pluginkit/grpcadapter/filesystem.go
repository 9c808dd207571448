package grpcadapter

import (
	"context"

	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/plugins/pluginkit/callinfo"
	"github.com/envd-project/envd/plugins/pluginkit/service"
	"google.golang.org/grpc"
)

// FilesystemServer serves a service.Filesystem over gRPC.
type FilesystemServer struct {
	fspb.UnimplementedFilesystemServer
	svc service.Filesystem
}

// NewFilesystemServer wraps svc.
func NewFilesystemServer(svc service.Filesystem) *FilesystemServer {
	return &FilesystemServer{svc: svc}
}

func (s *FilesystemServer) Stat(ctx context.Context, req *fspb.StatRequest) (*fspb.StatResponse, error) {
	res, err := s.svc.Stat(callinfo.FromIncoming(ctx), req)
	return res, toStatus(err)
}

func (s *FilesystemServer) MakeDir(ctx context.Context, req *fspb.MakeDirRequest) (*fspb.MakeDirResponse, error) {
	res, err := s.svc.MakeDir(callinfo.FromIncoming(ctx), req)
	return res, toStatus(err)
}

func (s *FilesystemServer) Move(ctx context.Context, req *fspb.MoveRequest) (*fspb.MoveResponse, error) {
	res, err := s.svc.Move(callinfo.FromIncoming(ctx), req)
	return res, toStatus(err)
}

func (s *FilesystemServer) ListDir(ctx context.Context, req *fspb.ListDirRequest) (*fspb.ListDirResponse, error) {
	res, err := s.svc.ListDir(callinfo.FromIncoming(ctx), req)
	return res, toStatus(err)
}

func (s *FilesystemServer) Remove(ctx context.Context, req *fspb.RemoveRequest) (*fspb.RemoveResponse, error) {
	res, err := s.svc.Remove(callinfo.FromIncoming(ctx), req)
	return res, toStatus(err)
}

func (s *FilesystemServer) WatchDir(req *fspb.WatchDirRequest, stream grpc.ServerStreamingServer[fspb.WatchDirResponse]) error {
	return toStatus(s.svc.WatchDir(callinfo.FromIncoming(stream.Context()), req, stream.Send))
}

func (s *FilesystemServer) CreateWatcher(ctx context.Context, req *fspb.CreateWatcherRequest) (*fspb.CreateWatcherResponse, error) {
	res, err := s.svc.CreateWatcher(callinfo.FromIncoming(ctx), req)
	return res, toStatus(err)
}

func (s *FilesystemServer) GetWatcherEvents(ctx context.Context, req *fspb.GetWatcherEventsRequest) (*fspb.GetWatcherEventsResponse, error) {
	res, err := s.svc.GetWatcherEvents(callinfo.FromIncoming(ctx), req)
	return res, toStatus(err)
}

func (s *FilesystemServer) RemoveWatcher(ctx context.Context, req *fspb.RemoveWatcherRequest) (*fspb.RemoveWatcherResponse, error) {
	res, err := s.svc.RemoveWatcher(callinfo.FromIncoming(ctx), req)
	return res, toStatus(err)
}

// FilesystemClient is a service.Filesystem that calls the plugin named by Plugin.
type FilesystemClient struct {
	Plugin string
	Conn   ConnFunc
}

var _ service.Filesystem = (*FilesystemClient)(nil)

func (c *FilesystemClient) client(ctx context.Context, stale grpc.ClientConnInterface) (fspb.FilesystemClient, grpc.ClientConnInterface, error) {
	conn, err := c.Conn(ctx, stale)
	if err != nil {
		return nil, nil, err
	}
	return fspb.NewFilesystemClient(conn), conn, nil
}

func (c *FilesystemClient) Stat(ctx context.Context, req *fspb.StatRequest) (*fspb.StatResponse, error) {
	return unary(ctx, c.Plugin, c.client, req, fspb.FilesystemClient.Stat)
}

func (c *FilesystemClient) MakeDir(ctx context.Context, req *fspb.MakeDirRequest) (*fspb.MakeDirResponse, error) {
	return unary(ctx, c.Plugin, c.client, req, fspb.FilesystemClient.MakeDir)
}

func (c *FilesystemClient) Move(ctx context.Context, req *fspb.MoveRequest) (*fspb.MoveResponse, error) {
	return unary(ctx, c.Plugin, c.client, req, fspb.FilesystemClient.Move)
}

func (c *FilesystemClient) ListDir(ctx context.Context, req *fspb.ListDirRequest) (*fspb.ListDirResponse, error) {
	return unary(ctx, c.Plugin, c.client, req, fspb.FilesystemClient.ListDir)
}

func (c *FilesystemClient) Remove(ctx context.Context, req *fspb.RemoveRequest) (*fspb.RemoveResponse, error) {
	return unary(ctx, c.Plugin, c.client, req, fspb.FilesystemClient.Remove)
}

func (c *FilesystemClient) WatchDir(ctx context.Context, req *fspb.WatchDirRequest, send service.Send[fspb.WatchDirResponse]) error {
	return serverStream(ctx, c.Plugin, c.client, req, fspb.FilesystemClient.WatchDir, send)
}

func (c *FilesystemClient) CreateWatcher(ctx context.Context, req *fspb.CreateWatcherRequest) (*fspb.CreateWatcherResponse, error) {
	return unary(ctx, c.Plugin, c.client, req, fspb.FilesystemClient.CreateWatcher)
}

func (c *FilesystemClient) GetWatcherEvents(ctx context.Context, req *fspb.GetWatcherEventsRequest) (*fspb.GetWatcherEventsResponse, error) {
	return unary(ctx, c.Plugin, c.client, req, fspb.FilesystemClient.GetWatcherEvents)
}

func (c *FilesystemClient) RemoveWatcher(ctx context.Context, req *fspb.RemoveWatcherRequest) (*fspb.RemoveWatcherResponse, error) {
	return unary(ctx, c.Plugin, c.client, req, fspb.FilesystemClient.RemoveWatcher)
}
