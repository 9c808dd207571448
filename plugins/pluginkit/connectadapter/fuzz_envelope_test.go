package connectadapter

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/internal/errmsg"
	"github.com/envd-project/envd/internal/users"
	"github.com/envd-project/envd/plugins/pluginkit/service"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// echoFS answers Stat and WatchDir with the path it was asked about, so
// that what the handler decoded can be compared with the request bytes.
// The parsing under test is the adapter's (connect-go's envelopes, our
// codecs and interceptors), not a filesystem.
type echoFS struct{ service.Filesystem }

func (echoFS) Stat(_ context.Context, req *fspb.StatRequest) (*fspb.StatResponse, error) {
	return &fspb.StatResponse{Entry: &fspb.EntryInfo{Name: "echo", Path: req.GetPath()}}, nil
}

func (echoFS) WatchDir(_ context.Context, req *fspb.WatchDirRequest, send service.Send[fspb.WatchDirResponse]) error {
	if err := send(&fspb.WatchDirResponse{Event: &fspb.WatchDirResponse_Start{Start: &fspb.WatchDirResponse_StartEvent{}}}); err != nil {
		return err
	}
	return send(&fspb.WatchDirResponse{Event: &fspb.WatchDirResponse_Filesystem{Filesystem: &fspb.FilesystemEvent{Name: req.GetPath()}}})
}

var fuzzContentTypes = []string{
	"application/json", "application/proto", "application/connect+json", "application/connect+proto",
	"application/grpc-web+proto", "application/grpc-web+json", "application/grpc-web", "text/plain", "application/connect+",
}

func envelope(flags byte, msg []byte) []byte {
	out := []byte{flags, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(out[1:], uint32(len(msg)))
	return append(out, msg...)
}

// FuzzConnectEnvelope posts arbitrary bodies, under every content type the
// front door serves, to a unary and a streaming procedure. Properties: no
// panic; a unary call answers 200 with exactly the path a reference decoder
// reads from the body, or a Connect error JSON with a code and a bounded
// message; a streaming call answers a well-formed sequence of envelopes
// ending in one end-of-stream frame, whose data frames (if any) echo the
// reference decoding of the request's single envelope.
func FuzzConnectEnvelope(f *testing.F) {
	statProto, _ := proto.Marshal(&fspb.StatRequest{Path: "/tmp/a"})
	watchProto, _ := proto.Marshal(&fspb.WatchDirRequest{Path: "/w"})
	f.Add(uint8(0), false, []byte(`{"path":"/tmp/a"}`), "")
	f.Add(uint8(1), false, statProto, "100")
	f.Add(uint8(2), true, envelope(0, []byte(`{"path":"/w","recursive":true}`)), "0")
	f.Add(uint8(3), true, envelope(0, watchProto), "")
	f.Add(uint8(4), true, envelope(0, watchProto), "1S")
	f.Add(uint8(3), true, envelope(1, watchProto), "")
	f.Add(uint8(3), true, []byte{0, 0, 0, 0, 100, 1, 2}, "")
	f.Add(uint8(5), false, []byte(`{"path":`), "abc")
	f.Add(uint8(0), false, []byte(`{"path":"`+strings.Repeat("x", 9000)+`", "depth": "nan"}`), "")

	_, h := NewFilesystemHandler(echoFS{}, HandlerOptions(users.Default)...)
	f.Fuzz(func(t *testing.T, ct uint8, stream bool, body []byte, timeout string) {
		ctype := fuzzContentTypes[int(ct)%len(fuzzContentTypes)]
		proc := "/filesystem.Filesystem/Stat"
		if stream {
			proc = "/filesystem.Filesystem/WatchDir"
		}
		req := httptest.NewRequest(http.MethodPost, proc, bytes.NewReader(body))
		req.Header.Set("Content-Type", ctype)
		if timeout != "" {
			if strings.HasPrefix(ctype, "application/grpc") {
				req.Header.Set("Grpc-Timeout", timeout)
			} else {
				req.Header.Set("Connect-Timeout-Ms", timeout)
			}
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		res := rec.Result()
		out := rec.Body.Bytes()
		rctype := res.Header.Get("Content-Type")
		switch {
		case res.StatusCode == http.StatusUnsupportedMediaType:
			return // content type and procedure kind do not match
		case rctype == "application/json" && res.StatusCode != http.StatusOK:
			checkUnaryError(t, out)
		case rctype == "application/json" || rctype == "application/proto":
			if res.StatusCode != http.StatusOK {
				t.Fatalf("unary error %d as %s", res.StatusCode, rctype)
			}
			var got fspb.StatResponse
			var err error
			if rctype == "application/proto" {
				err = proto.Unmarshal(out, &got)
			} else {
				err = (JSONCodec{}).Unmarshal(out, &got)
			}
			if err != nil {
				t.Fatalf("200 body does not decode: %v", err)
			}
			want, ok := referenceDecode(rctype, body)
			if !ok || got.GetEntry().GetPath() != want {
				t.Fatalf("echoed %.80q, reference decoding %.80q (ok %v)", got.GetEntry().GetPath(), want, ok)
			}
		case strings.HasPrefix(rctype, "application/connect+") || strings.HasPrefix(rctype, "application/grpc-web"):
			checkStream(t, rctype, out, body, res)
		default:
			t.Fatalf("answer %d %q: %.200q", res.StatusCode, rctype, out)
		}
	})
}

// referenceDecode is what a plain decoder reads as the path of a unary
// request body.
func referenceDecode(ctype string, body []byte) (string, bool) {
	var m fspb.StatRequest
	var err error
	if ctype == "application/proto" {
		err = proto.Unmarshal(body, &m)
	} else {
		err = protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(body, &m)
	}
	return m.GetPath(), err == nil
}

func checkUnaryError(t *testing.T, out []byte) {
	t.Helper()
	var e struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(out, &e); err != nil || e.Code == "" {
		t.Fatalf("unary error body %.200q: %v", out, err)
	}
	if len(e.Message) > errmsg.Max {
		t.Fatalf("unary error message of %d bytes", len(e.Message))
	}
}

func checkStream(t *testing.T, rctype string, out, body []byte, res *http.Response) {
	t.Helper()
	grpcWeb := strings.HasPrefix(rctype, "application/grpc-web")
	endFlag := byte(0x02)
	if grpcWeb {
		endFlag = 0x80
	}
	var paths []string
	ended := false
	for len(out) > 0 {
		if ended {
			t.Fatalf("frames after the end of stream")
		}
		if len(out) < 5 {
			t.Fatalf("cut envelope header %x", out)
		}
		flags, n := out[0], binary.BigEndian.Uint32(out[1:5])
		if uint32(len(out)-5) < n {
			t.Fatalf("envelope of %d bytes with %d left", n, len(out)-5)
		}
		msg := out[5 : 5+n]
		out = out[5+n:]
		if flags&endFlag != 0 {
			ended = true
			if !grpcWeb {
				var end struct {
					Error *struct {
						Code    string `json:"code"`
						Message string `json:"message"`
					} `json:"error"`
				}
				if err := json.Unmarshal(msg, &end); err != nil {
					t.Fatalf("end-of-stream %q: %v", msg, err)
				}
				if end.Error != nil && (end.Error.Code == "" || len(end.Error.Message) > errmsg.Max) {
					t.Fatalf("end-of-stream error %.200q", msg)
				}
			}
			continue
		}
		var ev fspb.WatchDirResponse
		var err error
		if strings.HasSuffix(rctype, "json") {
			err = (JSONCodec{}).Unmarshal(msg, &ev)
		} else {
			err = proto.Unmarshal(msg, &ev)
		}
		if err != nil {
			t.Fatalf("data frame does not decode: %v", err)
		}
		if fe := ev.GetFilesystem(); fe != nil {
			paths = append(paths, fe.GetName())
		}
	}
	// gRPC-Web may carry its status in headers when there is no body.
	if !ended && !(grpcWeb && res.Header.Get("Grpc-Status") != "") {
		t.Fatal("stream without an end")
	}
	if len(paths) == 0 {
		return
	}
	// Data frames: the request was one well-formed envelope.
	if len(body) < 5 || body[0] != 0 || int(binary.BigEndian.Uint32(body[1:5])) != len(body)-5 {
		t.Fatalf("answered data to a malformed envelope %x", body[:min(len(body), 8)])
	}
	var m fspb.WatchDirRequest
	var err error
	if strings.HasSuffix(rctype, "json") {
		err = protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(body[5:], &m)
	} else {
		err = proto.Unmarshal(body[5:], &m)
	}
	if err != nil || paths[0] != m.GetPath() {
		t.Fatalf("echoed %.80q, reference decoding %.80q (%v)", paths[0], m.GetPath(), err)
	}
}
