package callinfo

import (
	"context"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"
)

func TestParseKeepalive(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"": DefaultKeepalive, "50": 50 * time.Second, "0": DefaultKeepalive, "-3": DefaultKeepalive,
		"abc": DefaultKeepalive, "999999999": 24 * time.Hour,
	} {
		h := http.Header{}
		if in != "" {
			h.Set(KeepaliveHeader, in)
		}
		if got := ParseKeepalive(h); got != want {
			t.Errorf("%q: %v, want %v", in, got, want)
		}
	}
}

func TestAcrossTheGRPCHop(t *testing.T) {
	ctx := With(context.Background(), Info{User: "user", Keepalive: 50 * time.Second})
	out := ToOutgoing(ctx)
	md, _ := metadata.FromOutgoingContext(out)
	in := FromIncoming(metadata.NewIncomingContext(context.Background(), md))
	if got := From(in); got.User != "user" || got.Keepalive != 50*time.Second {
		t.Fatalf("got %+v", got)
	}
	if got := From(context.Background()); got.User != "" || got.Keepalive != DefaultKeepalive {
		t.Fatalf("defaults %+v", got)
	}
}
