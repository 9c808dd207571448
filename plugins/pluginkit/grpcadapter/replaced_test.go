package grpcadapter

import (
	"context"
	"testing"

	"connectrpc.com/connect"
	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/plugins/pluginkit/contract"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fsPlugin answers watcher calls the way an envd-fs does while it hands its
// watchers over (refuse) or after it took them (answer).
type fsPlugin struct {
	fspb.UnimplementedFilesystemServer
	refuse string // the Unavailable message of every answer, or "" to answer
	calls  int
}

func (p *fsPlugin) GetWatcherEvents(context.Context, *fspb.GetWatcherEventsRequest) (*fspb.GetWatcherEventsResponse, error) {
	p.calls++
	if p.refuse != "" {
		return nil, status.Error(codes.Unavailable, p.refuse)
	}
	return &fspb.GetWatcherEventsResponse{Events: []*fspb.FilesystemEvent{{Name: "new"}}}, nil
}

func (p *fsPlugin) WatchDir(_ *fspb.WatchDirRequest, s grpc.ServerStreamingServer[fspb.WatchDirResponse]) error {
	p.calls++
	if p.refuse != "" {
		return status.Error(codes.Unavailable, p.refuse)
	}
	return s.Send(&fspb.WatchDirResponse{Event: &fspb.WatchDirResponse_Start{Start: &fspb.WatchDirResponse_StartEvent{}}})
}

func serveFS(t *testing.T, p *fsPlugin) *grpc.ClientConn {
	t.Helper()
	srv := grpc.NewServer(contract.ServerOptions()...)
	fspb.RegisterFilesystemServer(srv, p)
	return serveUnix(t, srv)
}

// A watcher call refused by an envd-fs being replaced goes to the
// replacement (the supervisor's ConnFunc gives it once the old one is
// named stale); any other unavailable is the client's answer.
func TestReplacedCallGoesToTheReplacement(t *testing.T) {
	for _, refuse := range []string{"envd-fs is being replaced", "something else"} {
		old, next := &fsPlugin{refuse: refuse}, &fsPlugin{}
		oldConn, nextConn := serveFS(t, old), serveFS(t, next)
		c := &FilesystemClient{Plugin: "envd-fs", Conn: func(_ context.Context, stale grpc.ClientConnInterface) (grpc.ClientConnInterface, error) {
			if stale == grpc.ClientConnInterface(oldConn) {
				return nextConn, nil
			}
			return oldConn, nil
		}}
		res, err := c.GetWatcherEvents(context.Background(), &fspb.GetWatcherEventsRequest{WatcherId: "w"})
		sent := 0
		serr := c.WatchDir(context.Background(), &fspb.WatchDirRequest{Path: "/"}, func(*fspb.WatchDirResponse) error { sent++; return nil })
		if refuse == "something else" {
			if connect.CodeOf(err) != connect.CodeUnavailable || connect.CodeOf(serr) != connect.CodeUnavailable || next.calls != 0 {
				t.Fatalf("plain unavailable: %v / %v, %d calls on the replacement; want unavailable and none", err, serr, next.calls)
			}
			continue
		}
		if err != nil || len(res.GetEvents()) != 1 || serr != nil || sent != 1 {
			t.Fatalf("refused as replaced: %v %v, stream %v (%d messages); want the replacement's answers", res, err, serr, sent)
		}
		if old.calls != 2 || next.calls != 2 {
			t.Fatalf("calls: %d on the old plugin, %d on the replacement; want 2 and 2", old.calls, next.calls)
		}
	}
}
