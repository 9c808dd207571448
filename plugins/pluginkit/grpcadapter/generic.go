package grpcadapter

import (
	"context"
	"errors"
	"io"
	"strings"

	"github.com/envd-project/envd/plugins/pluginkit/callinfo"
	"github.com/envd-project/envd/plugins/pluginkit/service"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type clientFunc[C any] func(ctx context.Context, stale grpc.ClientConnInterface) (C, grpc.ClientConnInterface, error)

// undelivered reports whether err means the call never reached the plugin:
// the connection could not even be dialled, or the supervisor closed the
// client of a dead plugin between our picking it and the call starting (the
// replacement is on its way). Only such calls are safe to send again.
func undelivered(err error) bool {
	return connClosing(err) || dialFailed(err)
}

// dialFailed is the one failure a stream may report on its first Recv that
// still proves the plugin never saw the call. (A stream already open when its
// ClientConn closes also gets the "closing" error, so that one counts only
// before the stream exists.)
func dialFailed(err error) bool {
	st, ok := status.FromError(err)
	// grpc-go spells it "Error while dialing" or "error while dialing"
	// depending on the dial options.
	return ok && st.Code() == codes.Unavailable && strings.Contains(strings.ToLower(st.Message()), "error while dialing")
}

var grpcClosingMsg = status.Convert(grpc.ErrClientConnClosing).Message() //nolint:staticcheck // the exact error is what we must recognise

// connClosing is grpc-go's refusal to start a call on a closed ClientConn.
// It is returned before any stream exists, so the plugin never saw the call.
func connClosing(err error) bool {
	st, ok := status.FromError(err)
	return ok && st.Code() == codes.Canceled && st.Message() == grpcClosingMsg
}

// once runs do on the plugin's client and converts its error; a first try
// that never reached the plugin, or that a plugin being replaced refused
// without acting on it, is made once more on the replacement.
// Errors of get (the plugin is down) come back unchanged.
func once[C, T any](ctx context.Context, plugin string, get clientFunc[C], do func(C) (T, error)) (T, error) {
	var stale grpc.ClientConnInterface
	for attempt := 0; ; attempt++ {
		cl, conn, err := get(ctx, stale)
		if err != nil {
			var zero T
			return zero, err
		}
		v, err := do(cl)
		if attempt == 0 && (undelivered(err) || replaced(err)) {
			stale = conn
			continue
		}
		return v, fromStatus(plugin, err)
	}
}

func unary[C, Req, Res any](ctx context.Context, plugin string, get clientFunc[C], req *Req,
	call func(C, context.Context, *Req, ...grpc.CallOption) (*Res, error)) (*Res, error) {
	octx := callinfo.ToOutgoing(ctx)
	return once(ctx, plugin, get, func(cl C) (*Res, error) { return call(cl, octx, req) })
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
			if attempt == 0 && (undelivered(err) || replaced(err)) {
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
				if !received && attempt == 0 && (dialFailed(err) || replaced(err)) {
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
