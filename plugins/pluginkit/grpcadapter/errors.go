// Package grpcadapter carries the service interfaces across the go-plugin
// gRPC hop: a gRPC server around a service implementation (it runs in envd-proc
// and envd-fs) and a service implementation that calls a plugin (it runs in
// envd-init), with one retry for a call the plugin provably never saw.
//
// Connect and gRPC share their status codes, so a *connect.Error crosses the
// hop as a gRPC status with the same code and message and is rebuilt on the
// other side: the client sees exactly what the plugin said, its message
// bounded (errmsg.Max) on both sides so that no echo of a client's input can
// swell a trailer of the connection every call to the plugin shares.
package grpcadapter

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"
	"github.com/envd-project/envd/internal/errmsg"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// toStatus converts a service error into a gRPC status error.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return status.Error(codes.Code(ce.Code()), errmsg.Bound(ce.Message()))
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, errmsg.Bound(err.Error()))
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, errmsg.Bound(err.Error()))
	}
	return status.Error(codes.Unknown, errmsg.Bound(err.Error()))
}

// boundStatus bounds the message of any error a gRPC handler returns, and
// drops status details that would still make the trailer large (none of
// ours carries details).
func boundStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return toStatus(err)
	}
	if len(st.Message()) <= errmsg.Max && len(st.Details()) == 0 {
		return err
	}
	return status.Error(st.Code(), errmsg.Bound(st.Message()))
}

// UnaryBoundErrors and StreamBoundErrors bound the status of every call a
// plugin's gRPC server answers (the public services and the control API
// alike), whatever produced the error.
func UnaryBoundErrors(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
	res, err := next(ctx, req)
	return res, boundStatus(err)
}

// StreamBoundErrors is UnaryBoundErrors for streaming calls.
func StreamBoundErrors(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, next grpc.StreamHandler) error {
	return boundStatus(next(srv, ss))
}

// fromStatus converts an error returned by a gRPC call to a plugin back into
// the *connect.Error the plugin produced. Transport failures (the plugin died
// or is restarting) become unavailable with a message naming the plugin.
func fromStatus(plugin string, err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		if errors.Is(err, context.Canceled) {
			return connect.NewError(connect.CodeCanceled, err)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return connect.NewError(connect.CodeDeadlineExceeded, err)
		}
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("%s: %w", plugin, err))
	}
	// A plugin bounds its messages already; a stray one (an older plugin,
	// a transport message) is bounded here before it reaches the client.
	msg := errmsg.Bound(st.Message())
	if st.Code() == codes.Unavailable || connClosing(err) {
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("plugin %s is unavailable: %s", plugin, msg))
	}
	return connect.NewError(connect.Code(st.Code()), errors.New(msg))
}
