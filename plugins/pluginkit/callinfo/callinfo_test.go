package callinfo

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"
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

// Any user name passwd allows crosses a real gRPC connection, UTF-8
// included (an ASCII-only metadata key would fail the call).
func TestUserNameOverRealGRPC(t *testing.T) {
	lis := bufconn.Listen(1 << 20)
	seen := make(chan string, 1)
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		seen <- From(FromIncoming(ctx)).User
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ctx = ToOutgoing(With(ctx, Info{User: "josé"}))
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("call as josé: %v", err)
	}
	if got := <-seen; got != "josé" {
		t.Fatalf("plugin saw user %q", got)
	}
}
