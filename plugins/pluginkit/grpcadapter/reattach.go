package grpcadapter

import (
	"context"
	"errors"
	"io"
	"strings"
	"time"

	"connectrpc.com/connect"
	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/plugins/pluginkit/callinfo"
	"github.com/envd-project/envd/plugins/pluginkit/service"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// StreamRegistry counts the client streams envd-init holds open per process
// (envdinit/vault), so a restarted envd-proc knows how many will re-attach
// and holds that process's output back until they have.
type StreamRegistry interface {
	// Attach counts one stream of pid; the returned func uncounts it.
	Attach(pid uint32) func()
}

// reattachBound bounds how long a client stream waits for envd-proc to be
// back before it ends with the error that cut it.
const reattachBound = 30 * time.Second

// pluginGone reports whether err means the plugin process went away under
// an open call (crash, kill, hot-swap), rather than the plugin answering.
func pluginGone(err error) bool {
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch st.Code() {
	case codes.Unavailable:
		return true
	case codes.Canceled:
		return st.Message() == grpcClosingMsg
	}
	return false
}

// replaced reports whether a plugin being hot-swapped refused the call
// without acting on it (process.ErrReplaced, filesystem.ErrReplaced): its
// replacement takes it.
func replaced(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return false
	}
	switch st.Message() {
	case "envd-proc is being replaced", "envd-fs is being replaced":
		return true
	}
	return false
}

// stopping reports whether a ConnFunc error says envd-init itself is stopping.
func stopping(err error) bool {
	return connect.CodeOf(err) == connect.CodeUnavailable && strings.Contains(err.Error(), "envd is stopping")
}

type eventRecv func() (*procpb.ProcessEvent, error)

// follow relays a Start or Connect stream. When the plugin goes away under
// it, the stream is attached again to the restarted plugin (Connect by
// pid), so the client keeps receiving the process's output and end event.
// What is lost is only what the dead plugin had read and not yet sent on:
// at most one subscriber queue (8 MiB) plus the hop's flow-control window
// (4 MiB), in practice the few chunks in flight; a hot-swap loses nothing.
func (c *ProcessClient) follow(ctx context.Context, open func(procpb.ProcessClient, context.Context) (eventRecv, error), send func(*procpb.ProcessEvent) error) error {
	octx, cancel := context.WithCancel(callinfo.ToOutgoing(ctx))
	defer func() { cancel() }()
	var (
		recv  eventRecv
		conn  grpc.ClientConnInterface
		stale grpc.ClientConnInterface
	)
	// A first try that never reached the plugin is made once more.
	openOnce := func(retry bool) error {
		for attempt := 0; ; attempt++ {
			cl, cn, err := c.client(ctx, stale)
			if err != nil {
				return err
			}
			r, err := open(cl, octx)
			if err != nil {
				if attempt == 0 && retry && undelivered(err) {
					stale = cn
					continue
				}
				return fromStatus(c.Plugin, err)
			}
			recv, conn = r, cn
			return nil
		}
	}
	if err := openOnce(true); err != nil {
		return err
	}
	retried := false
	var (
		pid      uint32
		detach   func()
		received bool
	)
	defer func() {
		if detach != nil {
			detach()
		}
	}()
	for {
		ev, err := recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if !received && !retried && (dialFailed(err) || replaced(err)) {
				// Never reached the plugin: open it once more.
				retried, stale = true, conn
				if err := openOnce(false); err != nil {
					return err
				}
				continue
			}
			if pid == 0 || ctx.Err() != nil || !pluginGone(err) {
				return fromStatus(c.Plugin, err)
			}
			r, cn, rcancel, rerr := c.reattach(ctx, pid, conn, err)
			if rerr != nil {
				return rerr
			}
			prev := cancel
			cancel = func() { prev(); rcancel() }
			recv, conn = r, cn
			continue
		}
		received = true
		if s := ev.GetStart(); s != nil && pid == 0 {
			pid = s.GetPid()
			if c.Streams != nil {
				detach = c.Streams.Attach(pid)
			}
		}
		if err := send(ev); err != nil {
			return err
		}
	}
}

// reattach opens Connect{pid} on the plugin that replaced stale and skips
// its start event (the client had it already).
func (c *ProcessClient) reattach(ctx context.Context, pid uint32, stale grpc.ClientConnInterface, cause error) (eventRecv, grpc.ClientConnInterface, context.CancelFunc, error) {
	info := callinfo.From(ctx)
	info.Reattach = true
	rctx, cancel := context.WithCancel(callinfo.ToOutgoing(callinfo.With(ctx, info)))
	bound := time.Now().Add(reattachBound)
	req := &procpb.ConnectRequest{Process: &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Pid{Pid: pid}}}
	fail := func(err error) (eventRecv, grpc.ClientConnInterface, context.CancelFunc, error) {
		cancel()
		return nil, nil, nil, err
	}
	for {
		if time.Now().After(bound) {
			return fail(fromStatus(c.Plugin, cause))
		}
		cl, conn, err := c.client(ctx, stale)
		if err != nil {
			if ctx.Err() == nil && !stopping(err) && connect.CodeOf(err) == connect.CodeUnavailable {
				continue // still restarting (Conn waited its bounded time)
			}
			return fail(err)
		}
		stream, err := cl.Connect(rctx, req)
		if err == nil {
			var ev *procpb.ProcessEvent
			var res *procpb.ConnectResponse
			res, err = stream.Recv()
			ev = res.GetEvent()
			if err == nil && ev.GetStart() == nil {
				return fail(connect.NewError(connect.CodeInternal, errors.New("re-attached stream began without a start event")))
			}
			if err == nil {
				return func() (*procpb.ProcessEvent, error) {
					res, err := stream.Recv()
					return res.GetEvent(), err
				}, conn, cancel, nil
			}
		}
		if ctx.Err() == nil && (pluginGone(err) || undelivered(err)) {
			// Gone again before answering: wait for the next one.
			stale = conn
			cause = err
			continue
		}
		return fail(fromStatus(c.Plugin, err))
	}
}

func (c *ProcessClient) startStream(ctx context.Context, req *procpb.StartRequest, send service.Send[procpb.StartResponse]) error {
	return c.follow(ctx, func(cl procpb.ProcessClient, octx context.Context) (eventRecv, error) {
		return events(cl.Start(octx, req))
	}, func(ev *procpb.ProcessEvent) error { return send(&procpb.StartResponse{Event: ev}) })
}

func (c *ProcessClient) connectStream(ctx context.Context, req *procpb.ConnectRequest, send service.Send[procpb.ConnectResponse]) error {
	return c.follow(ctx, func(cl procpb.ProcessClient, octx context.Context) (eventRecv, error) {
		return events(cl.Connect(octx, req))
	}, func(ev *procpb.ProcessEvent) error { return send(&procpb.ConnectResponse{Event: ev}) })
}

// events reads the process events of a Start or Connect stream.
func events[Res any, P interface {
	*Res
	GetEvent() *procpb.ProcessEvent
}](s grpc.ServerStreamingClient[Res], err error) (eventRecv, error) {
	if err != nil {
		return nil, err
	}
	return func() (*procpb.ProcessEvent, error) {
		res, err := s.Recv()
		return P(res).GetEvent(), err
	}, nil
}

type inputStream = grpc.ClientStreamingClient[procpb.StreamInputRequest, procpb.StreamInputResponse]

// streamInput relays a StreamInput stream; when the plugin goes away under
// it, it is opened again on the restarted plugin with the same start
// message, and the message whose send failed is sent again. Input the dead
// plugin had taken but not yet written is lost (at most the hop's window).
func (c *ProcessClient) streamInput(ctx context.Context, recv service.Recv[procpb.StreamInputRequest]) (*procpb.StreamInputResponse, error) {
	octx, cancel := context.WithCancel(callinfo.ToOutgoing(ctx))
	defer cancel()
	var start *procpb.StreamInputRequest
	var conn grpc.ClientConnInterface
	openOn := func(stale grpc.ClientConnInterface) (inputStream, error) {
		return once(ctx, c.Plugin, func(ctx context.Context, st grpc.ClientConnInterface) (procpb.ProcessClient, grpc.ClientConnInterface, error) {
			if st == nil {
				st = stale
			}
			cl, cn, err := c.client(ctx, st)
			conn = cn
			return cl, cn, err
		}, func(cl procpb.ProcessClient) (inputStream, error) {
			return cl.StreamInput(octx)
		})
	}
	// reopen replaces a stream cut by the plugin's end (bounded).
	bound := time.Time{}
	reopen := func(cause error) (inputStream, error) {
		if bound.IsZero() {
			bound = time.Now().Add(reattachBound)
		}
		for {
			if start == nil || ctx.Err() != nil || !pluginGone(cause) || time.Now().After(bound) {
				return nil, fromStatus(c.Plugin, cause)
			}
			s, err := openOn(conn)
			if err != nil {
				if connect.CodeOf(err) == connect.CodeUnavailable && !stopping(err) {
					continue
				}
				return nil, err
			}
			if err := s.Send(start); err != nil {
				_, cause = s.CloseAndRecv()
				continue
			}
			return s, nil
		}
	}
	stream, err := openOn(nil)
	if err != nil {
		return nil, err
	}
	for {
		msg, err := recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if msg.GetStart() != nil && start == nil {
			start = msg
		}
		for {
			err := stream.Send(msg)
			if err == nil {
				break
			}
			if !errors.Is(err, io.EOF) {
				return nil, fromStatus(c.Plugin, err)
			}
			// The plugin ended the call; its status says why.
			_, serr := stream.CloseAndRecv()
			if serr == nil || !pluginGone(serr) {
				return nil, fromStatus(c.Plugin, serr)
			}
			if stream, err = reopen(serr); err != nil {
				return nil, err
			}
			if msg == start {
				break // reopen sent it
			}
		}
		bound = time.Time{}
	}
	for {
		res, err := stream.CloseAndRecv()
		if err == nil || !pluginGone(err) {
			return res, fromStatus(c.Plugin, err)
		}
		if stream, err = reopen(err); err != nil {
			return nil, err
		}
	}
}

// idempotent is unary for calls that may safely run twice (List, Update,
// CloseStdin): one cut by the plugin's death is sent again, once, to the
// replacement, so that it waits for the plugin instead of failing.
func idempotent[Req, Res any](ctx context.Context, c *ProcessClient, req *Req,
	call func(procpb.ProcessClient, context.Context, *Req, ...grpc.CallOption) (*Res, error)) (*Res, error) {
	octx := callinfo.ToOutgoing(ctx)
	var stale grpc.ClientConnInterface
	for attempt := 0; ; attempt++ {
		cl, conn, err := c.client(ctx, stale)
		if err != nil {
			return nil, err
		}
		res, err := call(cl, octx, req)
		if attempt == 0 && err != nil && ctx.Err() == nil && (undelivered(err) || pluginGone(err)) && !replaced(err) {
			stale = conn
			continue
		}
		return res, fromStatus(c.Plugin, err)
	}
}
