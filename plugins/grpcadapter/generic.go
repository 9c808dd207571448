package grpcadapter

import (
	"context"
	"errors"
	"io"
	"strings"

	"github.com/envd-project/envd/plugins/callinfo"
	"github.com/envd-project/envd/plugins/service"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type clientFunc[C any] func(ctx context.Context, stale grpc.ClientConnInterface) (C, grpc.ClientConnInterface, error)

// undelivered reports whether err means the call never reached the plugin:
// the connection could not even be dialled (the plugin died and its
// replacement is on its way). Only such calls are safe to send again.
func undelivered(err error) bool {
	st, ok := status.FromError(err)
	// grpc-go spells it "Error while dialing" or "error while dialing"
	// depending on the dial options.
	return ok && st.Code() == codes.Unavailable && strings.Contains(strings.ToLower(st.Message()), "error while dialing")
}

func unary[C, Req, Res any](ctx context.Context, plugin string, get clientFunc[C], req *Req,
	call func(C, context.Context, *Req, ...grpc.CallOption) (*Res, error)) (*Res, error) {
	octx := callinfo.ToOutgoing(ctx)
	var stale grpc.ClientConnInterface
	for attempt := 0; ; attempt++ {
		cl, conn, err := get(ctx, stale)
		if err != nil {
			return nil, err
		}
		res, err := call(cl, octx, req)
		if attempt == 0 && undelivered(err) {
			stale = conn
			continue
		}
		return res, fromStatus(plugin, err)
	}
}

func serverStream[C, Req, Res any](ctx context.Context, plugin string, get clientFunc[C], req *Req,
	call func(C, context.Context, *Req, ...grpc.CallOption) (grpc.ServerStreamingClient[Res], error),
	send service.Send[Res]) error {
	// Cancelling on return stops the plugin side when our caller goes away.
	octx, cancel := context.WithCancel(callinfo.ToOutgoing(ctx))
	defer cancel()
	var stale grpc.ClientConnInterface
	for attempt := 0; ; attempt++ {
		cl, conn, err := get(ctx, stale)
		if err != nil {
			return err
		}
		stream, err := call(cl, octx, req)
		if err != nil {
			if attempt == 0 && undelivered(err) {
				stale = conn
				continue
			}
			return fromStatus(plugin, err)
		}
		received := false
		for {
			msg, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				if !received && attempt == 0 && undelivered(err) {
					stale = conn
					break
				}
				return fromStatus(plugin, err)
			}
			received = true
			if err := send(msg); err != nil {
				return err
			}
		}
	}
}
