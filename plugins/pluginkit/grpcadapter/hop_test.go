package grpcadapter

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/envd-project/envd/internal/errmsg"
	"github.com/envd-project/envd/plugins/pluginkit/contract"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// hop serves, on a real Unix socket with the hop's options, methods that
// answer with oversized statuses, trailers and headers, and a stream that
// ticks until cancelled; it returns a client connection like envd-init's.
func hop(t *testing.T, bound bool) *grpc.ClientConn {
	t.Helper()
	huge := strings.Repeat("x", 17<<20)
	opts := contract.ServerOptions()
	if bound {
		opts = append(opts, grpc.ChainUnaryInterceptor(UnaryBoundErrors), grpc.ChainStreamInterceptor(StreamBoundErrors))
	}
	opts = append(opts, grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
		method, _ := grpc.MethodFromServerStream(ss)
		if method != "/t/Tick" {
			if err := ss.RecvMsg(&emptypb.Empty{}); err != nil {
				return err
			}
		}
		switch method {
		case "/t/Tick":
			for {
				if err := ss.SendMsg(&emptypb.Empty{}); err != nil {
					return err
				}
				select {
				case <-ss.Context().Done():
					return nil
				case <-time.After(10 * time.Millisecond):
				}
			}
		case "/t/HugeStatus":
			return status.Error(codes.NotFound, "process with tag "+huge+" not found")
		case "/t/HugeTrailer":
			ss.SetTrailer(metadata.Pairs("echo", huge[:2<<20]))
			return ss.SendMsg(&emptypb.Empty{})
		case "/t/HugeHeader":
			if err := ss.SendHeader(metadata.Pairs("echo", huge[:2<<20])); err != nil {
				return err
			}
			return ss.SendMsg(&emptypb.Empty{})
		}
		return ss.SendMsg(&emptypb.Empty{})
	}))
	return serveUnix(t, grpc.NewServer(opts...))
}

// serveUnix serves srv on a Unix socket of the test and returns a client
// connection to it with the hop's dial options.
func serveUnix(t *testing.T, srv *grpc.Server) *grpc.ClientConn {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "hop.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+sock, append(contract.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// TestOversizedCallLeavesTheConnection: whatever one call's status, trailer
// or header carries, it fails alone; a stream open on the same connection
// keeps delivering (a COMPRESSION_ERROR would end it with unavailable).
func TestOversizedCallLeavesTheConnection(t *testing.T) {
	for _, bound := range []bool{false, true} {
		conn := hop(t, bound)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		tick, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/t/Tick")
		if err != nil {
			t.Fatal(err)
		}
		if err := tick.CloseSend(); err != nil {
			t.Fatal(err)
		}
		ticking := func(after string) {
			t.Helper()
			for i := 0; i < 3; i++ {
				if err := tick.RecvMsg(&emptypb.Empty{}); err != nil {
					t.Fatalf("bound=%v: the other stream ended after %s: %v", bound, after, err)
				}
			}
		}
		ticking("start")
		for _, m := range []string{"/t/HugeStatus", "/t/HugeTrailer", "/t/HugeHeader"} {
			err := conn.Invoke(ctx, m, &emptypb.Empty{}, &emptypb.Empty{})
			st := status.Convert(err)
			t.Logf("bound=%v %s: %v %.120s", bound, m, st.Code(), st.Message())
			if m == "/t/HugeStatus" && bound {
				// The interceptor turns it into the real answer, bounded.
				if st.Code() != codes.NotFound || len(st.Message()) > errmsg.Max || !strings.HasSuffix(st.Message(), " not found") {
					t.Errorf("bounded status: %v %d bytes", st.Code(), len(st.Message()))
				}
			} else if err == nil || st.Code() == codes.Unavailable {
				t.Errorf("bound=%v %s: %v", bound, m, err)
			}
			ticking(m)
		}
		// And a huge header from envd-init's side is refused before it is sent.
		octx := metadata.AppendToOutgoingContext(ctx, "echo", strings.Repeat("y", 2<<20))
		err = conn.Invoke(octx, "/t/Echo", &emptypb.Empty{}, &emptypb.Empty{})
		if err == nil || status.Code(err) == codes.Unavailable {
			t.Errorf("bound=%v: a 2 MiB request header: %v", bound, err)
		}
		ticking("a huge request header")
		if err := conn.Invoke(ctx, "/t/Echo", &emptypb.Empty{}, &emptypb.Empty{}); err != nil {
			t.Fatalf("bound=%v: a plain call after it all: %v", bound, err)
		}
	}
}
