package connectadapter

import (
	"context"
	"fmt"
	"net/http"

	"connectrpc.com/connect"
	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/gen/filesystem/filesystemconnect"
	"google.golang.org/protobuf/proto"
)

// A ListDir answer can be large (a 10,000-entry listing is ~2 MB of
// JSON). Decoded from the hop and encoded again in envd-init it would be
// walked twice more; instead the plugin encodes it once in the codec the
// client asked for, and envd-init's handler writes those bytes as they
// are (compression, framing, errors stay connect-go's).

// ListDirEncoded answers a ListDir in the named codec: Encoded holds the
// message in that codec, or Msg is set for the handler to encode itself.
type ListDirEncoded func(ctx context.Context, req *fspb.ListDirRequest, codec string) (*Encoded, error)

// Encoded is a response message already encoded (Bytes), or one still to
// encode (Msg).
type Encoded struct {
	Bytes []byte
	Msg   proto.Message
}

// listDirIn is the decoded request and the codec it came in.
type listDirIn struct {
	msg   fspb.ListDirRequest
	codec string
}

// NewListDirHandler returns the path and handler of filesystem.Filesystem's
// ListDir served by call, with the options of NewFilesystemHandler.
func NewListDirHandler(call ListDirEncoded, opts ...connect.HandlerOption) (string, http.Handler) {
	schema := fspb.File_filesystem_filesystem_proto.Services().ByName("Filesystem").Methods().ByName("ListDir")
	h := connect.NewUnaryHandler(filesystemconnect.FilesystemListDirProcedure,
		func(ctx context.Context, req *connect.Request[listDirIn]) (*connect.Response[Encoded], error) {
			res, err := call(ctx, &req.Msg.msg, req.Msg.codec)
			if err != nil {
				return nil, err
			}
			return connect.NewResponse(res), nil
		},
		connect.WithSchema(schema),
		connect.WithHandlerOptions(withCodecs(opts)...),
		// Last, so that they win over every other codec option.
		connect.WithHandlerOptions(passCodecs()...),
	)
	return filesystemconnect.FilesystemListDirProcedure, zeroTimeoutIsNone(h)
}

// EncodeAs encodes m as a handler of this package would in the named codec.
func EncodeAs(codec string, m proto.Message) ([]byte, error) {
	c, ok := codecs()[codec]
	if !ok {
		return nil, fmt.Errorf("unknown codec %q", codec)
	}
	return c.Marshal(m)
}

// codecs are the codecs the handlers of this package negotiate.
func codecs() map[string]connect.Codec {
	return map[string]connect.Codec{
		"proto":               protoCodec{},
		"json":                JSONCodec{name: "json"},
		"json; charset=utf-8": JSONCodec{name: "json; charset=utf-8"},
	}
}

func passCodecs() []connect.HandlerOption {
	var opts []connect.HandlerOption
	for _, c := range codecs() {
		opts = append(opts, connect.WithCodec(passCodec{c}))
	}
	return opts
}

// passCodec decodes a listDirIn with its codec, noting the codec's name,
// and writes an Encoded's bytes as they are. Everything else is inner's.
type passCodec struct{ inner connect.Codec }

func (c passCodec) Name() string { return c.inner.Name() }

func (c passCodec) Unmarshal(data []byte, m any) error {
	if in, ok := m.(*listDirIn); ok {
		in.codec = c.inner.Name()
		return c.inner.Unmarshal(data, &in.msg)
	}
	return c.inner.Unmarshal(data, m)
}

func (c passCodec) Marshal(m any) ([]byte, error) {
	if e, ok := m.(*Encoded); ok {
		if e.Msg != nil {
			return c.inner.Marshal(e.Msg)
		}
		return e.Bytes, nil
	}
	return c.inner.Marshal(m)
}

// protoCodec is connect-go's default binary codec (unexported there),
// error texts included.
type protoCodec struct{}

func (protoCodec) Name() string { return "proto" }

func (protoCodec) Marshal(m any) ([]byte, error) {
	pm, ok := m.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("%T doesn't implement proto.Message", m)
	}
	return proto.Marshal(pm)
}

func (protoCodec) Unmarshal(data []byte, m any) error {
	pm, ok := m.(proto.Message)
	if !ok {
		return fmt.Errorf("%T doesn't implement proto.Message", m)
	}
	if err := proto.Unmarshal(data, pm); err != nil {
		return fmt.Errorf("unmarshal into %T: %w", m, err)
	}
	return nil
}
