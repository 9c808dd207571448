package connectadapter

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"connectrpc.com/connect"
	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/gen/filesystem/filesystemconnect"
	"github.com/envd-project/envd/plugins/pluginkit/service"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// listFS lists a real directory (ListDir only).
type listFS struct{ service.Filesystem }

func (listFS) ListDir(_ context.Context, req *fspb.ListDirRequest) (*fspb.ListDirResponse, error) {
	ents, err := os.ReadDir(req.GetPath())
	if err != nil {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("path not found: %w", err))
	}
	res := &fspb.ListDirResponse{}
	for _, e := range ents {
		fi, _ := e.Info()
		res.Entries = append(res.Entries, &fspb.EntryInfo{Name: e.Name(), Path: filepath.Join(req.GetPath(), e.Name()),
			Size: fi.Size(), ModifiedTime: timestamppb.New(fi.ModTime()), Metadata: map[string]string{"k": "v"}})
	}
	return res, nil
}

// A ListDir served from bytes the plugin encoded (or from a message, when it
// could not) answers exactly what the typed handler answers, in every
// protocol and codec, errors included.
func TestListDirHandlerAnswersAsTheTypedOne(t *testing.T) {
	dir := t.TempDir()
	for i := range 5 {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d", i)), bytes.Repeat([]byte("x"), i), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	typed := http.NewServeMux()
	typed.Handle(NewFilesystemHandler(listFS{}, HandlerOptions(nil)...))
	serve := func(asMessage bool) *httptest.Server {
		mux := http.NewServeMux()
		mux.Handle(NewListDirHandler(func(ctx context.Context, req *fspb.ListDirRequest, codec string) (*Encoded, error) {
			res, err := listFS{}.ListDir(ctx, req)
			if err != nil || asMessage {
				return &Encoded{Msg: res}, err
			}
			b, err := EncodeAs(codec, res)
			return &Encoded{Bytes: b}, err
		}, HandlerOptions(nil)...))
		return httptest.NewServer(mux)
	}
	want := httptest.NewServer(typed)
	defer want.Close()
	for _, asMessage := range []bool{false, true} {
		got := serve(asMessage)
		// Connect unary, byte for byte (one entry: a map's order is free).
		one := filepath.Join(t.TempDir(), "one")
		if err := os.MkdirAll(one+"/d", 0o755); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct{ ctype, body string }{
			{"application/json", `{"path":"` + one + `"}`},
			{"application/json", `{"path":"` + dir + `/missing"}`},
			{"application/json", `{"path":`},
			{"application/json; charset=utf-8", `{"path":"` + one + `"}`},
			{"application/proto", string(must(proto.Marshal(&fspb.ListDirRequest{Path: one})))},
			{"application/proto", "\xff\xff"},
		} {
			post := func(url string) string {
				res, err := http.Post(url+filesystemconnect.FilesystemListDirProcedure, c.ctype, bytes.NewReader([]byte(c.body)))
				if err != nil {
					t.Fatal(err)
				}
				defer res.Body.Close()
				b, _ := io.ReadAll(res.Body)
				return fmt.Sprintf("%d %s %q", res.StatusCode, res.Header.Get("Content-Type"), b)
			}
			if g, w := post(got.URL), post(want.URL); g != w {
				t.Errorf("asMessage=%v %s %q:\n got %s\nwant %s", asMessage, c.ctype, c.body, g, w)
			}
		}
		// Every protocol and codec a client may use, as messages.
		for name, opts := range map[string][]connect.ClientOption{
			"connect json": {connect.WithProtoJSON()}, "connect proto": nil,
			"grpc": {connect.WithGRPC()}, "grpc-web json": {connect.WithGRPCWeb(), connect.WithProtoJSON()},
		} {
			cl := filesystemconnect.NewFilesystemClient(http.DefaultClient, got.URL, opts...)
			res, err := cl.ListDir(context.Background(), connect.NewRequest(&fspb.ListDirRequest{Path: dir}))
			wantRes, _ := listFS{}.ListDir(context.Background(), &fspb.ListDirRequest{Path: dir})
			if err != nil || !proto.Equal(res.Msg, wantRes) {
				t.Errorf("asMessage=%v %s: %v %v", asMessage, name, res, err)
			}
		}
		got.Close()
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
