package connectadapter

import (
	"context"
	"errors"

	"connectrpc.com/connect"
	"github.com/envd-project/envd/internal/errmsg"
)

// BoundErrors bounds the message of every error a handler returns to the
// client (errmsg.Max): a plugin bounds its own already, this catches
// envd-init's own errors and a standalone plugin's, which may echo a
// client's input just as well. The code is kept.
func BoundErrors() connect.Interceptor { return boundErrors{} }

type boundErrors struct{}

func (boundErrors) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		res, err := next(ctx, req)
		return res, boundError(err)
	}
}

func (boundErrors) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (boundErrors) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		return boundError(next(ctx, conn))
	}
}

func boundError(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		if len(err.Error()) <= errmsg.Max {
			return err
		}
		// The code connect-go would pick for a plain error.
		code := connect.CodeUnknown
		switch {
		case errors.Is(err, context.Canceled):
			code = connect.CodeCanceled
		case errors.Is(err, context.DeadlineExceeded):
			code = connect.CodeDeadlineExceeded
		}
		return connect.NewError(code, errors.New(errmsg.Bound(err.Error())))
	}
	if len(ce.Message()) <= errmsg.Max && len(ce.Details()) == 0 {
		return err
	}
	out := connect.NewError(ce.Code(), errors.New(errmsg.Bound(ce.Message())))
	for k, v := range ce.Meta() {
		out.Meta()[k] = v
	}
	return out
}
