// Package grpcadapter carries the service interfaces across the go-plugin
// gRPC hop: a gRPC server around a service implementation (it runs in envd-proc
// and envd-fs) and a service implementation that calls a plugin (it runs in
// envd-init), with one retry for a call the plugin provably never saw.
//
// Connect and gRPC share their status codes, so a *connect.Error crosses the
// hop as a gRPC status with the same code and message and is rebuilt on the
// other side: the client sees exactly what the plugin said.
package grpcadapter

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"
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
		return status.Error(codes.Code(ce.Code()), ce.Message())
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Error(codes.Unknown, err.Error())
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
	if st.Code() == codes.Unavailable || connClosing(err) {
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("plugin %s is unavailable: %s", plugin, st.Message()))
	}
	return connect.NewError(connect.Code(st.Code()), errors.New(st.Message()))
}
