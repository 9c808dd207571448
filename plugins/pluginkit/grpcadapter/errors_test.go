package grpcadapter

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"github.com/envd-project/envd/internal/errmsg"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestErrorsCrossTheHopUnchanged(t *testing.T) {
	for code := connect.CodeCanceled; code <= connect.CodeUnauthenticated; code++ {
		if code == connect.CodeUnavailable {
			continue
		}
		in := connect.NewError(code, fmt.Errorf("process with pid %d not found", 42))
		out := fromStatus("envd-proc", toStatus(in))
		var ce *connect.Error
		if !errors.As(out, &ce) || ce.Code() != code || ce.Message() != in.Message() {
			t.Errorf("%v: got %v", in, out)
		}
	}
}

func TestTransportFailureNamesThePlugin(t *testing.T) {
	err := fromStatus("envd-fs", status.Error(codes.Unavailable, "connection error"))
	if connect.CodeOf(err) != connect.CodeUnavailable || !errorsContains(err, "envd-fs") {
		t.Fatalf("got %v", err)
	}
	if !undelivered(status.Error(codes.Unavailable, `connection error: desc = "transport: error while dialing: connect: connection refused"`)) {
		t.Fatal("dial failure not recognised as undelivered")
	}
	if undelivered(status.Error(codes.Unavailable, "error reading from server: EOF")) {
		t.Fatal("a read failure may have been delivered")
	}
	closing := status.Error(codes.Canceled, "grpc: the client connection is closing")
	if !undelivered(closing) || dialFailed(closing) {
		t.Fatal("a call refused by a closed ClientConn is undelivered, but only before its stream exists")
	}
	if undelivered(status.Error(codes.Canceled, "context canceled")) {
		t.Fatal("a cancelled call may have been delivered")
	}
	if err := fromStatus("envd-proc", closing); connect.CodeOf(err) != connect.CodeUnavailable || !errorsContains(err, "envd-proc") {
		t.Fatalf("closing client: %v", err)
	}
	if got := toStatus(context.Canceled); status.Code(got) != codes.Canceled {
		t.Fatalf("canceled: %v", got)
	}
	if got := toStatus(errors.New("boom")); status.Code(got) != codes.Unknown {
		t.Fatalf("plain error: %v", got)
	}
}

func errorsContains(err error, s string) bool {
	return err != nil && strings.Contains(err.Error(), s)
}

func TestMessagesBoundedAcrossTheHop(t *testing.T) {
	echo := strings.Repeat("p", 200<<10)
	in := connect.NewError(connect.CodeNotFound, fmt.Errorf("file not found: %s", echo))
	st := status.Convert(toStatus(in))
	if st.Code() != codes.NotFound || len(st.Message()) > errmsg.Max || !strings.Contains(st.Message(), "bytes cut]") {
		t.Fatalf("plugin side: %v, %d bytes", st.Code(), len(st.Message()))
	}
	// envd-init bounds what an unbounded peer would send, code kept.
	out := fromStatus("envd-fs", status.Error(codes.InvalidArgument, echo))
	var ce *connect.Error
	if !errors.As(out, &ce) || ce.Code() != connect.CodeInvalidArgument || len(ce.Message()) > errmsg.Max {
		t.Fatalf("envd-init side: %v", out)
	}
	if got := boundStatus(errors.New(echo)); status.Code(got) != codes.Unknown || len(status.Convert(got).Message()) > errmsg.Max {
		t.Fatalf("plain error: %v", status.Code(got))
	}
	if got := boundStatus(status.Error(codes.Aborted, "short")); status.Convert(got).Message() != "short" {
		t.Fatalf("short status changed: %v", got)
	}
}
