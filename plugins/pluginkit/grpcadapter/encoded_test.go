package grpcadapter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"connectrpc.com/connect"
	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/plugins/pluginkit/callinfo"
	"github.com/envd-project/envd/plugins/pluginkit/contract"
	"github.com/envd-project/envd/plugins/pluginkit/service"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// dirLister lists a real directory (ListDir only), as the user the call
// names.
type dirLister struct {
	service.Filesystem
}

func (dirLister) ListDir(ctx context.Context, req *fspb.ListDirRequest) (*fspb.ListDirResponse, error) {
	ents, err := os.ReadDir(req.GetPath())
	if err != nil {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("path not found: %w", err))
	}
	res := &fspb.ListDirResponse{}
	for _, e := range ents {
		res.Entries = append(res.Entries, &fspb.EntryInfo{Name: e.Name(), Owner: callinfo.From(ctx).User})
	}
	return res, nil
}

func jsonEncoder(codec string, m proto.Message) ([]byte, error) {
	if codec != "json" {
		return nil, errors.New("unknown codec")
	}
	return protojson.Marshal(m)
}

// The encoded ListDir carries the plugin's own encoding of the answer; a
// codec the plugin cannot encode, or a plugin without the encoded method
// (an older envd-fs swapped in), gives the message for envd-init to
// encode; errors keep their code and message.
func TestListDirEncoded(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"a", "b"} {
		if err := os.WriteFile(dir+"/"+name, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, _ := dirLister{}.ListDir(callinfo.With(context.Background(), callinfo.Info{User: "root"}), &fspb.ListDirRequest{Path: dir})
	withEncoded := grpc.NewServer(contract.ServerOptions()...)
	fspb.RegisterFilesystemServer(withEncoded, NewFilesystemServer(dirLister{}))
	RegisterEncodedFilesystem(withEncoded, dirLister{}, jsonEncoder)
	older := grpc.NewServer(contract.ServerOptions()...)
	fspb.RegisterFilesystemServer(older, NewFilesystemServer(dirLister{}))
	client := func(conn *grpc.ClientConn) *FilesystemClient {
		return &FilesystemClient{Plugin: contract.FS, Conn: func(context.Context, grpc.ClientConnInterface) (grpc.ClientConnInterface, error) { return conn, nil }}
	}
	encoded, plain := client(serveUnix(t, withEncoded)), client(serveUnix(t, older))
	ctx := callinfo.With(context.Background(), callinfo.Info{User: "root"})
	req := &fspb.ListDirRequest{Path: dir}

	b, msg, err := encoded.ListDirEncoded(ctx, req, "json")
	wantJSON, _ := jsonEncoder("json", want)
	if err != nil || msg != nil || !bytes.Equal(b, wantJSON) {
		t.Fatalf("json: %q %v %v, want %q", b, msg, err, wantJSON)
	}
	for name, c := range map[string]struct {
		fs    *FilesystemClient
		codec string
	}{"a codec the plugin cannot encode": {encoded, "proto"}, "an older plugin": {plain, "json"}} {
		b, msg, err := c.fs.ListDirEncoded(ctx, req, c.codec)
		if err != nil || b != nil || !proto.Equal(msg, want) {
			t.Errorf("%s: %q %v %v", name, b, msg, err)
		}
	}
	for _, fs := range []*FilesystemClient{encoded, plain} {
		_, _, err := fs.ListDirEncoded(ctx, &fspb.ListDirRequest{Path: dir + "/missing"}, "json")
		if connect.CodeOf(err) != connect.CodeNotFound || !bytes.Contains([]byte(err.Error()), []byte("path not found")) {
			t.Errorf("error: %v", err)
		}
	}
}

// slowLister takes its time over a listing.
type slowLister struct {
	dirLister
	d time.Duration
}

func (s slowLister) ListDir(ctx context.Context, req *fspb.ListDirRequest) (*fspb.ListDirResponse, error) {
	time.Sleep(s.d)
	return s.dirLister.ListDir(ctx, req)
}

// A listing that takes longer than the bound is not cut off (the plugin
// says early that it took it); a plugin that does not take the call at all
// (stopped) gets the client an unavailable naming it after the bound.
func TestListDirAckBound(t *testing.T) {
	oldAck, oldTaken := listDirAckTimeout, listDirTakenAfter
	listDirAckTimeout, listDirTakenAfter = 400*time.Millisecond, 50*time.Millisecond
	defer func() { listDirAckTimeout, listDirTakenAfter = oldAck, oldTaken }()
	slow := grpc.NewServer(contract.ServerOptions()...)
	RegisterEncodedFilesystem(slow, slowLister{d: time.Second}, jsonEncoder)
	release := make(chan struct{})
	defer close(release)
	stuck := grpc.NewServer(append(contract.ServerOptions(), grpc.UnknownServiceHandler(func(any, grpc.ServerStream) error {
		<-release
		return nil
	}))...)
	client := func(conn *grpc.ClientConn) *FilesystemClient {
		return &FilesystemClient{Plugin: contract.FS, Conn: func(context.Context, grpc.ClientConnInterface) (grpc.ClientConnInterface, error) { return conn, nil }}
	}
	ctx := context.Background()
	req := &fspb.ListDirRequest{Path: t.TempDir()}
	if b, _, err := client(serveUnix(t, slow)).ListDirEncoded(ctx, req, "json"); err != nil || string(b) != "{}" {
		t.Errorf("slow listing: %q %v", b, err)
	}
	start := time.Now()
	_, _, err := client(serveUnix(t, stuck)).ListDirEncoded(ctx, req, "json")
	if connect.CodeOf(err) != connect.CodeUnavailable || !bytes.Contains([]byte(err.Error()), []byte("plugin envd-fs is unavailable")) {
		t.Errorf("stuck plugin: %v", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("stuck plugin answered after %s", d)
	}
}
