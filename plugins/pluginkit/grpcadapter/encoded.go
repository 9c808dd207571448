package grpcadapter

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/plugins/pluginkit/callinfo"
	"github.com/envd-project/envd/plugins/pluginkit/service"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// A ListDir crosses the hop with its answer already encoded by the plugin
// in the client's codec (a Connect codec name, sent as metadata), as bytes:
// envd-init writes them without decoding and encoding the listing again.
// A plugin that cannot encode it (an unknown codec, a listing its codec
// refuses) sends the proto encoding and says so in a header; envd-init
// then encodes the message itself, errors included.
const (
	encodedListDirMethod = "/envd.hop.EncodedFilesystem/ListDir"
	mdCodec              = "envd-codec"
	// mdEncoding, a response header: "proto" when the bytes are the proto
	// encoding of the answer instead of the asked codec's.
	mdEncoding = "envd-encoding"
)

// Encoder encodes a message in a named codec.
type Encoder func(codec string, m proto.Message) ([]byte, error)

// encodedFilesystem serves the encoded ListDir.
type encodedFilesystem struct {
	svc    service.Filesystem
	encode Encoder
}

var encodedFilesystemDesc = grpc.ServiceDesc{
	ServiceName: "envd.hop.EncodedFilesystem",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "ListDir",
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(fspb.ListDirRequest)
			if err := dec(in); err != nil {
				return nil, err
			}
			s := srv.(*encodedFilesystem)
			if interceptor == nil {
				return s.listDir(ctx, in)
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: encodedListDirMethod}
			return interceptor(ctx, in, info, func(ctx context.Context, req any) (any, error) {
				return s.listDir(ctx, req.(*fspb.ListDirRequest))
			})
		},
	}},
}

// RegisterEncodedFilesystem serves svc's ListDir with its answer encoded
// by encode (see FilesystemClient.ListDirEncoded).
func RegisterEncodedFilesystem(s *grpc.Server, svc service.Filesystem, encode Encoder) {
	s.RegisterService(&encodedFilesystemDesc, &encodedFilesystem{svc: svc, encode: encode})
}

func (s *encodedFilesystem) listDir(ctx context.Context, req *fspb.ListDirRequest) (*wrapperspb.BytesValue, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	// A long listing says early that it was taken (listDirAckTimeout).
	taken := time.AfterFunc(listDirTakenAfter, func() { _ = grpc.SendHeader(ctx, metadata.MD{}) })
	res, err := s.svc.ListDir(callinfo.FromIncoming(ctx), req)
	taken.Stop()
	if err != nil {
		return nil, toStatus(err)
	}
	if codec := md.Get(mdCodec); len(codec) == 1 {
		if b, err := s.encode(codec[0], res); err == nil {
			return &wrapperspb.BytesValue{Value: b}, nil
		}
	}
	b, err := proto.Marshal(res)
	if err != nil {
		return nil, toStatus(err)
	}
	// A trailer: the header may be out already.
	if err := grpc.SetTrailer(ctx, metadata.Pairs(mdEncoding, "proto")); err != nil {
		return nil, toStatus(err)
	}
	return &wrapperspb.BytesValue{Value: b}, nil
}

// listDirAckTimeout bounds how long envd-init waits for envd-fs to take a
// ListDir (its answer, or the header a long listing sends after
// listDirTakenAfter) before it answers unavailable itself, as it does for
// a handoff (a stopped envd-fs). A listing has no effect to revoke.
// Variables for the tests.
var (
	listDirAckTimeout = 5 * time.Second
	listDirTakenAfter = time.Second
)

// Whether the plugin took a ListDir in time; decided once.
const (
	ackPending int32 = iota
	ackTaken
	ackGaveUp
)

// ListDirEncoded calls the plugin's ListDir for an answer in codec: the
// encoded bytes, or the message when the plugin could not encode it (or
// is a plugin without the encoded ListDir).
func (c *FilesystemClient) ListDirEncoded(ctx context.Context, req *fspb.ListDirRequest, codec string) ([]byte, *fspb.ListDirResponse, error) {
	octx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(callinfo.ToOutgoing(ctx), mdCodec, codec))
	defer cancel()
	var ack atomic.Int32
	t := time.AfterFunc(listDirAckTimeout, func() {
		if ack.CompareAndSwap(ackPending, ackGaveUp) {
			cancel()
		}
	})
	defer t.Stop()
	get := func(ctx context.Context, stale grpc.ClientConnInterface) (grpc.ClientConnInterface, grpc.ClientConnInterface, error) {
		conn, err := c.Conn(ctx, stale)
		return conn, conn, err
	}
	type answer struct {
		b       []byte
		trailer metadata.MD
	}
	a, err := once(ctx, c.Plugin, get, func(conn grpc.ClientConnInterface) (answer, error) {
		var a answer
		stream, err := conn.NewStream(octx, &grpc.StreamDesc{}, encodedListDirMethod)
		if err != nil {
			return a, err
		}
		if err := stream.SendMsg(req); err != nil {
			return a, err
		}
		if err := stream.CloseSend(); err != nil {
			return a, err
		}
		// The header comes with the answer, or early from a long listing.
		_, _ = stream.Header()
		ack.CompareAndSwap(ackPending, ackTaken)
		out := new(wrapperspb.BytesValue)
		err = stream.RecvMsg(out)
		a.b, a.trailer = out.GetValue(), stream.Trailer()
		return a, err
	})
	if ack.Load() == ackGaveUp {
		return nil, nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("plugin %s is unavailable: it did not take the request within %s", c.Plugin, listDirAckTimeout))
	}
	if connect.CodeOf(err) == connect.CodeUnimplemented && strings.Contains(err.Error(), "unknown service envd.hop.EncodedFilesystem") {
		// A plugin from before the encoded ListDir (a swapped-in envd-fs).
		res, err := c.ListDir(ctx, req)
		return nil, res, err
	}
	if err != nil {
		return nil, nil, err
	}
	if v := a.trailer.Get(mdEncoding); len(v) > 0 && v[0] == "proto" {
		res := new(fspb.ListDirResponse)
		if err := proto.Unmarshal(a.b, res); err != nil {
			return nil, nil, fromStatus(c.Plugin, status.Error(codes.Internal, err.Error()))
		}
		return nil, res, nil
	}
	return a.b, nil, nil
}
