// Package service declares the two public services as plain Go interfaces. It
// runs in envd-init (whose proxy clients implement them) and in envd-proc and
// envd-fs (whose services implement them).
//
// The process and filesystem logic is written once against these interfaces;
// every transport (the go-plugin gRPC server, the standalone Connect server,
// envd-init's proxy) is a thin adapter around them. Errors are *connect.Error
// values: their code and message reach the client unchanged through every hop.
//
// Per-call identity and options (the caller's user, the keepalive interval)
// travel in the context (package callinfo); the deadline is the context's.
package service

import (
	"context"

	fspb "github.com/envd-project/envd/gen/filesystem"
	procpb "github.com/envd-project/envd/gen/process"
)

// Send delivers one message of a server stream to the caller. It returns an
// error once the caller is gone; the implementation must then stop sending.
type Send[T any] func(*T) error

// Recv returns the next message of a client stream, or io.EOF once the
// caller has half-closed the stream.
type Recv[T any] func() (*T, error)

// Process is the process.Process service (shared/spec/WIRE.md §5).
type Process interface {
	List(ctx context.Context, req *procpb.ListRequest) (*procpb.ListResponse, error)
	Start(ctx context.Context, req *procpb.StartRequest, send Send[procpb.StartResponse]) error
	Connect(ctx context.Context, req *procpb.ConnectRequest, send Send[procpb.ConnectResponse]) error
	Update(ctx context.Context, req *procpb.UpdateRequest) (*procpb.UpdateResponse, error)
	StreamInput(ctx context.Context, recv Recv[procpb.StreamInputRequest]) (*procpb.StreamInputResponse, error)
	SendInput(ctx context.Context, req *procpb.SendInputRequest) (*procpb.SendInputResponse, error)
	SendSignal(ctx context.Context, req *procpb.SendSignalRequest) (*procpb.SendSignalResponse, error)
	CloseStdin(ctx context.Context, req *procpb.CloseStdinRequest) (*procpb.CloseStdinResponse, error)
}

// Filesystem is the filesystem.Filesystem service (shared/spec/WIRE.md §6).
type Filesystem interface {
	Stat(ctx context.Context, req *fspb.StatRequest) (*fspb.StatResponse, error)
	MakeDir(ctx context.Context, req *fspb.MakeDirRequest) (*fspb.MakeDirResponse, error)
	Move(ctx context.Context, req *fspb.MoveRequest) (*fspb.MoveResponse, error)
	ListDir(ctx context.Context, req *fspb.ListDirRequest) (*fspb.ListDirResponse, error)
	Remove(ctx context.Context, req *fspb.RemoveRequest) (*fspb.RemoveResponse, error)
	WatchDir(ctx context.Context, req *fspb.WatchDirRequest, send Send[fspb.WatchDirResponse]) error
	CreateWatcher(ctx context.Context, req *fspb.CreateWatcherRequest) (*fspb.CreateWatcherResponse, error)
	GetWatcherEvents(ctx context.Context, req *fspb.GetWatcherEventsRequest) (*fspb.GetWatcherEventsResponse, error)
	RemoveWatcher(ctx context.Context, req *fspb.RemoveWatcherRequest) (*fspb.RemoveWatcherResponse, error)
}
