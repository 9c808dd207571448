package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"connectrpc.com/connect"

	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/plugins/pluginkit/callinfo"
	"github.com/envd-project/envd/plugins/pluginkit/service"
	"github.com/envd-project/envd/plugins/process/fanout"
)

// Start implements service.Process (WIRE §5.1).
func (s *Service) Start(ctx context.Context, req *procpb.StartRequest, send service.Send[procpb.StartResponse]) error {
	if req == nil {
		req = &procpb.StartRequest{}
	}
	p, sub, err := s.spawn(ctx, req)
	if err != nil {
		return err
	}
	return s.stream(ctx, p, sub, func(ev *procpb.ProcessEvent) error {
		return send(&procpb.StartResponse{Event: ev})
	})
}

// Connect implements service.Process (WIRE §5.2): start{pid}, then the
// live events from now on; a process that exited in the last 30 s yields
// start{pid} and its end straight away.
func (s *Service) Connect(ctx context.Context, req *procpb.ConnectRequest, send service.Send[procpb.ConnectResponse]) error {
	p, err := s.lookup(req.GetProcess(), true)
	if err != nil {
		return err
	}
	sub := p.hub.Subscribe()
	if callinfo.From(ctx).Reattach {
		// Subscribed: the output held for the re-attaching streams may flow
		// once they all are.
		p.reattached()
	}
	return s.stream(ctx, p, sub, func(ev *procpb.ProcessEvent) error {
		return send(&procpb.ConnectResponse{Event: ev})
	})
}

// stream sends start{pid}, then the subscriber's data with keepalives after
// every idle interval, then the end event. Leaving early (client gone,
// canceled, deadline) only unsubscribes: the process is not touched.
func (s *Service) stream(ctx context.Context, p *proc, sub *fanout.Sub[*procpb.ProcessEvent], send func(*procpb.ProcessEvent) error) error {
	defer p.hub.Unsubscribe(sub)
	if err := send(startEvent(p.pid)); err != nil {
		return streamErr("start", err)
	}
	interval := callinfo.From(ctx).Keepalive
	idle := time.NewTimer(interval)
	defer idle.Stop()
	for {
		ev, ok, done := sub.Next()
		if ok {
			if err := send(ev); err != nil {
				return streamErr("data", err)
			}
			idle.Reset(interval)
			continue
		}
		if done {
			if sub.Lagged() {
				return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(
					"output of process %d dropped: this stream fell more than %d bytes behind; reconnect to follow live output", p.pid, s.limits.Bytes))
			}
			if p.isHandedOver() {
				// Everything this envd-proc read has been sent: envd-init
				// attaches the stream to the next one.
				return connect.NewError(connect.CodeUnavailable, fmt.Errorf("envd-proc handed process %d over to its replacement", p.pid))
			}
			// Closed by the hub: p.end was set before.
			if err := send(p.end); err != nil {
				return streamErr("end", err)
			}
			return nil
		}
		select {
		case <-sub.Ready():
		case <-idle.C:
			if err := send(keepaliveEvent()); err != nil {
				return streamErr("keepalive", err)
			}
			idle.Reset(interval)
		case <-ctx.Done():
			return ctxErr(ctx)
		}
	}
}

func streamErr(what string, err error) error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	return connect.NewError(connect.CodeUnknown, fmt.Errorf("error sending %s event: %w", what, err))
}

func ctxErr(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
	}
	return connect.NewError(connect.CodeCanceled, ctx.Err())
}

// Update implements service.Process (WIRE §5.5).
func (s *Service) Update(ctx context.Context, req *procpb.UpdateRequest) (*procpb.UpdateResponse, error) {
	p, err := s.lookup(req.GetProcess(), false)
	if err != nil {
		return nil, err
	}
	if req.GetPty() == nil {
		return &procpb.UpdateResponse{}, nil
	}
	size := req.GetPty().GetSize()
	if err := p.resize(size.GetCols(), size.GetRows()); err != nil {
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("error resizing tty: %w", err))
	}
	return &procpb.UpdateResponse{}, nil
}

// input applies one ProcessInput (SendInput and StreamInput data).
func input(ctx context.Context, p *proc, in *procpb.ProcessInput) error {
	switch v := in.GetInput().(type) {
	case *procpb.ProcessInput_Stdin:
		if err := p.writeStdin(ctx, v.Stdin); err != nil {
			return connect.NewError(connect.CodeInternal, fmt.Errorf("error writing to stdin: %w", err))
		}
	case *procpb.ProcessInput_Pty:
		if err := p.writeTTY(ctx, v.Pty); err != nil {
			return connect.NewError(connect.CodeInternal, fmt.Errorf("error writing to tty: %w", err))
		}
	default:
		return connect.NewError(connect.CodeUnimplemented, errors.New("invalid input type: neither stdin nor pty set"))
	}
	return nil
}

// SendInput implements service.Process (WIRE §5.4).
func (s *Service) SendInput(ctx context.Context, req *procpb.SendInputRequest) (*procpb.SendInputResponse, error) {
	p, err := s.lookup(req.GetProcess(), false)
	if err != nil {
		return nil, err
	}
	if err := input(ctx, p, req.GetInput()); err != nil {
		return nil, err
	}
	return &procpb.SendInputResponse{}, nil
}

// StreamInput implements service.Process (WIRE §5.4): start selects the
// process, then data and keepalives until the client half-closes.
func (s *Service) StreamInput(ctx context.Context, recv service.Recv[procpb.StreamInputRequest]) (*procpb.StreamInputResponse, error) {
	// Received on their own goroutine so that a hot-swap can end the call
	// (the goroutine ends with the call).
	type received struct {
		msg *procpb.StreamInputRequest
		err error
	}
	msgs := make(chan received)
	go func() {
		for {
			msg, err := recv()
			select {
			case msgs <- received{msg, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	var p *proc
	for {
		var r received
		select {
		case r = <-msgs:
		case <-s.handover:
			return nil, connect.NewError(connect.CodeUnavailable, errors.New("envd-proc handed its processes over to its replacement"))
		}
		msg, err := r.msg, r.err
		if errors.Is(err, io.EOF) {
			return &procpb.StreamInputResponse{}, nil
		}
		if err != nil {
			var ce *connect.Error
			if errors.As(err, &ce) {
				return nil, err
			}
			return nil, connect.NewError(connect.CodeUnknown, fmt.Errorf("error streaming input: %w", err))
		}
		switch ev := msg.GetEvent().(type) {
		case *procpb.StreamInputRequest_Start:
			if p != nil {
				return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("stream input already started"))
			}
			if p, err = s.lookup(ev.Start.GetProcess(), false); err != nil {
				return nil, err
			}
		case *procpb.StreamInputRequest_Data:
			if p == nil {
				return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("stream input data received before start"))
			}
			if err := input(ctx, p, ev.Data.GetInput()); err != nil {
				return nil, err
			}
		case *procpb.StreamInputRequest_Keepalive:
		default:
			return nil, connect.NewError(connect.CodeUnimplemented, errors.New("invalid stream input event: none of start, data, keepalive set"))
		}
	}
}

// SendSignal implements service.Process (WIRE §5.6): SIGKILL or SIGTERM to
// the child pid only.
func (s *Service) SendSignal(ctx context.Context, req *procpb.SendSignalRequest) (*procpb.SendSignalResponse, error) {
	p, err := s.lookup(req.GetProcess(), false)
	if err != nil {
		return nil, err
	}
	var sig syscall.Signal
	switch req.GetSignal() {
	case procpb.Signal_SIGNAL_SIGKILL:
		sig = syscall.SIGKILL
	case procpb.Signal_SIGNAL_SIGTERM:
		sig = syscall.SIGTERM
	default:
		return nil, connect.NewError(connect.CodeUnimplemented, fmt.Errorf("invalid signal: %s", req.GetSignal()))
	}
	if err := p.sendSignal(sig); err != nil {
		if errors.Is(err, os.ErrProcessDone) {
			// Reaped between the lookup and the signal: it is gone.
			return nil, errNotFound(req.GetProcess())
		}
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("error sending signal: %w", err))
	}
	return &procpb.SendSignalResponse{}, nil
}

// CloseStdin implements service.Process (WIRE §5.4).
func (s *Service) CloseStdin(ctx context.Context, req *procpb.CloseStdinRequest) (*procpb.CloseStdinResponse, error) {
	p, err := s.lookup(req.GetProcess(), false)
	if err != nil {
		return nil, err
	}
	if err := p.closeStdin(); err != nil {
		return nil, connect.NewError(connect.CodeUnknown, fmt.Errorf("error closing stdin: %w", err))
	}
	return &procpb.CloseStdinResponse{}, nil
}
