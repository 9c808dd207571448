package connectadapter

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/gen/filesystem/filesystemconnect"
	"github.com/envd-project/envd/plugins/pluginkit/service"
)

// checkSame encodes m with JSONCodec and protojson and requires the same
// outcome: the same error, or bytes equal to protojson's once its random
// whitespace is compacted away, which protojson parses back to m. It
// reports whether the fast path encoded m.
func checkSame(t testing.TB, m proto.Message) (fast bool) {
	t.Helper()
	if r, ok := m.(*fspb.ListDirResponse); ok && r != nil {
		var out []byte
		out, fast = appendListDir([]byte("pre"), r)
		if !fast && string(out) != "pre" {
			t.Fatalf("a failed fast path left %q", out)
		}
	}
	got, gotErr := JSONCodec{}.Marshal(m)
	want, wantErr := protojson.Marshal(m)
	if (gotErr == nil) != (wantErr == nil) || (gotErr != nil && gotErr.Error() != wantErr.Error()) {
		t.Fatalf("errors differ: fast %v, protojson %v", gotErr, wantErr)
	}
	if wantErr != nil {
		if fast {
			t.Fatalf("fast path encoded what protojson rejects (%v)", wantErr)
		}
		return false
	}
	// Compacting drops protojson's random spaces (and those of a fallback).
	var g, w bytes.Buffer
	if err := json.Compact(&g, got); err != nil {
		t.Fatalf("not JSON: %v: %s", err, got)
	}
	if err := json.Compact(&w, want); err != nil {
		t.Fatalf("protojson output is not JSON: %v", err)
	}
	if !bytes.Equal(g.Bytes(), w.Bytes()) {
		t.Fatalf("encodings differ:\nfast      %s\nprotojson %s", got, w.Bytes())
	}
	back := m.ProtoReflect().New().Interface()
	if err := protojson.Unmarshal(got, back); err != nil {
		t.Fatalf("protojson cannot parse %s: %v", got, err)
	}
	if !proto.Equal(back, m) {
		t.Fatalf("round trip differs:\nin  %v\nout %v", m, back)
	}
	return fast
}

func ts(sec int64, nsec int32) *timestamppb.Timestamp {
	return &timestamppb.Timestamp{Seconds: sec, Nanos: nsec}
}

func strp(s string) *string { return &s }

func TestJSONCodecEdgeCases(t *testing.T) {
	entries := []*fspb.EntryInfo{
		{},
		{Name: "a", Path: "/a", Type: fspb.FileType_FILE_TYPE_FILE, Size: 0, Mode: 0o644, Permissions: "-rw-r--r--", Owner: "root", Group: "root", ModifiedTime: ts(1764350000, 123456789)},
		{Name: "d", Type: fspb.FileType_FILE_TYPE_DIRECTORY, Size: 4096, Mode: 0o755, Permissions: "drwxr-xr-x", ModifiedTime: ts(1764350000, 0)},
		{Name: "l", Type: fspb.FileType_FILE_TYPE_SYMLINK, Permissions: "Lrwxrwxrwx", SymlinkTarget: strp("")},
		{Name: "l2", SymlinkTarget: strp("/target with space/ü")},
		{Type: fspb.FileType(42), Size: -1, Mode: math.MaxUint32},
		{Size: math.MaxInt64, ModifiedTime: ts(0, 0)},
		{Size: math.MinInt64, ModifiedTime: ts(1, 123000000)},
		{ModifiedTime: ts(1, 123456000)},
		{ModifiedTime: ts(1, 1)},
		{ModifiedTime: ts(1, 100)},
		{ModifiedTime: ts(-1, 999999999)},
		{ModifiedTime: ts(minTimestampSeconds, 0)},
		{ModifiedTime: ts(maxTimestampSeconds, 999999999)},
		{Name: "ctl \x00\x01\x07\b\t\n\v\f\r\x1b\x1f\x7f end", Path: `quote" back\ slash/ <>&`},
		{Name: "unicode ü € 𝄞 \u2028\u2029 \ufffd", Owner: "1000", Group: "65534"},
		{Metadata: map[string]string{"b": "2", "a": "1", "": "empty key", "k\"\\": "v\n", "ü": ""}},
		{Metadata: map[string]string{}},
	}
	for i, e := range entries {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			if !checkSame(t, &fspb.ListDirResponse{Entries: []*fspb.EntryInfo{e}}) ||
				!checkSame(t, &fspb.ListDirResponse{Entries: []*fspb.EntryInfo{e, entries[1], e}}) {
				t.Fatal("fast path not taken")
			}
		})
	}
	checkSame(t, &fspb.ListDirResponse{})
	checkSame(t, &fspb.ListDirResponse{Entries: []*fspb.EntryInfo{}})
	if got, err := (JSONCodec{}).Marshal((*fspb.ListDirResponse)(nil)); err != nil || string(got) != "{}" {
		t.Fatalf("nil message = %q, %v", got, err)
	}
	// Other messages go through protojson untouched.
	checkSame(t, &fspb.StatResponse{Entry: entries[1]})
	checkSame(t, &fspb.WatchDirResponse{Event: &fspb.WatchDirResponse_Keepalive{Keepalive: &fspb.WatchDirResponse_KeepAlive{}}})
}

// TestJSONCodecFallsBack checks that what the fast path cannot encode gives
// protojson's own result or error.
func TestJSONCodecFallsBack(t *testing.T) {
	bad := []*fspb.EntryInfo{
		{Name: "bad \xff utf8"},
		{Path: "ok", Owner: "\xc3"},
		{SymlinkTarget: strp("\xed\xa0\x80")}, // a surrogate half
		{Metadata: map[string]string{"k": "\xff"}},
		{Metadata: map[string]string{"\xff": "v"}},
		{ModifiedTime: ts(maxTimestampSeconds+1, 0)},
		{ModifiedTime: ts(minTimestampSeconds-1, 0)},
		{ModifiedTime: ts(1, -1)},
		{ModifiedTime: ts(1, 1e9)},
		{ModifiedTime: ts(1, 1e9+1)},
	}
	for i, e := range bad {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			checkSame(t, &fspb.ListDirResponse{Entries: []*fspb.EntryInfo{{Name: "fine"}, e}})
		})
	}
	// A nil element: whatever protojson does with it.
	checkSame(t, &fspb.ListDirResponse{Entries: []*fspb.EntryInfo{{Name: "x"}, nil}})
	// A pooled buffer with content before the message is kept as is.
	out, err := JSONCodec{}.MarshalAppend([]byte("prefix"), &fspb.ListDirResponse{Entries: bad[:1]})
	if err == nil || string(out) != "" && !strings.HasPrefix(string(out), "prefix") {
		t.Fatalf("MarshalAppend = %q, %v", out, err)
	}
}

var alphabet = []string{"a", "Z", "0", " ", "/", ".", "\"", "\\", "\n", "\t", "\x00", "\x1f", "\x7f", "ü", "€", "𝄞", "\u2028", "<", "&", "\xff"}

func randString(r *rand.Rand) string {
	var b strings.Builder
	for range r.IntN(8) {
		b.WriteString(alphabet[r.IntN(len(alphabet))])
	}
	return b.String()
}

func randEntry(r *rand.Rand) *fspb.EntryInfo {
	e := &fspb.EntryInfo{
		Name:        randString(r),
		Type:        fspb.FileType(r.IntN(5)),
		Path:        randString(r),
		Mode:        uint32(r.IntN(3)) * r.Uint32(),
		Permissions: randString(r),
		Owner:       randString(r),
		Group:       randString(r),
	}
	switch r.IntN(3) {
	case 1:
		e.Size = r.Int64()
	case 2:
		e.Size = -r.Int64N(1 << 40)
	}
	if r.IntN(4) > 0 {
		nanos := []int32{0, 123000000, 123456000, 123456789, 1, 999999999, int32(r.IntN(1e9))}
		e.ModifiedTime = ts(r.Int64N(maxTimestampSeconds-minTimestampSeconds)+minTimestampSeconds, nanos[r.IntN(len(nanos))])
	}
	if r.IntN(3) == 0 {
		e.SymlinkTarget = strp(randString(r))
	}
	if r.IntN(3) == 0 {
		e.Metadata = map[string]string{}
		for range r.IntN(4) {
			e.Metadata[randString(r)] = randString(r)
		}
	}
	return e
}

func TestJSONCodecRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	fast := 0
	const n = 3000
	for range n {
		m := &fspb.ListDirResponse{}
		for range r.IntN(4) {
			m.Entries = append(m.Entries, randEntry(r))
		}
		if checkSame(t, m) {
			fast++
		}
	}
	// Invalid UTF-8 is in the alphabet, so some fall back, most must not.
	if fast < n/4 {
		t.Fatalf("fast path taken %d times of %d", fast, n)
	}
	t.Logf("fast path taken %d times of %d", fast, n)
}

func FuzzJSONCodec(f *testing.F) {
	f.Add("name", "/p/name", "-rw-r--r--", "root", "root", "", "", "", int64(0), uint32(0o644), int32(1), int64(1764350000), int32(123456789), false, true)
	f.Add("", "", "", "", "", "t", "k", "v", int64(-5), uint32(0), int32(9), int64(0), int32(0), true, true)
	f.Add("\x00\"\\", "\xff", "ü", "€", "\u2028", "\n", "", "", int64(1), uint32(1), int32(3), int64(-62135596800), int32(1e9), true, false)
	f.Fuzz(func(t *testing.T, name, path, perm, owner, group, target, mdk, mdv string,
		size int64, mode uint32, typ int32, secs int64, nanos int32, hasTarget, hasTime bool) {
		e := &fspb.EntryInfo{Name: name, Path: path, Permissions: perm, Owner: owner, Group: group,
			Size: size, Mode: mode, Type: fspb.FileType(typ)}
		if hasTarget {
			e.SymlinkTarget = &target
		}
		if hasTime {
			e.ModifiedTime = ts(secs, nanos)
		}
		if mdk != "" || mdv != "" {
			e.Metadata = map[string]string{mdk: mdv, mdv: mdk}
		}
		checkSame(t, &fspb.ListDirResponse{Entries: []*fspb.EntryInfo{e, {Name: name}}})
	})
}

func TestJSONCodecUnmarshal(t *testing.T) {
	var req fspb.ListDirRequest
	if err := (JSONCodec{}).Unmarshal([]byte(`{"path":"/x","depth":2,"someNewField":{"a":[1]}}`), &req); err != nil {
		t.Fatalf("unknown field not ignored: %v", err)
	}
	if req.GetPath() != "/x" || req.GetDepth() != 2 {
		t.Fatalf("decoded %v", &req)
	}
	if err := (JSONCodec{}).Unmarshal(nil, &req); err == nil {
		t.Fatal("empty payload accepted")
	}
	if err := (JSONCodec{}).Unmarshal([]byte(`{"path":1}`), &req); err == nil || !strings.Contains(err.Error(), "unmarshal into *filesystem.ListDirRequest") {
		t.Fatalf("bad payload: %v", err)
	}
	if _, err := (JSONCodec{}).Marshal("not a message"); err == nil {
		t.Fatal("non-message marshalled")
	}
}

// fakeFS serves a fixed listing and a short watch stream.
type fakeFS struct {
	service.Filesystem
	list *fspb.ListDirResponse
}

func (f fakeFS) ListDir(context.Context, *fspb.ListDirRequest) (*fspb.ListDirResponse, error) {
	return f.list, nil
}

func (f fakeFS) WatchDir(_ context.Context, _ *fspb.WatchDirRequest, send service.Send[fspb.WatchDirResponse]) error {
	if err := send(&fspb.WatchDirResponse{Event: &fspb.WatchDirResponse_Start{Start: &fspb.WatchDirResponse_StartEvent{}}}); err != nil {
		return err
	}
	return send(&fspb.WatchDirResponse{Event: &fspb.WatchDirResponse_Filesystem{Filesystem: &fspb.FilesystemEvent{
		Name: "f", Type: fspb.EventType_EVENT_TYPE_CREATE, Entry: f.list.Entries[0]}}})
}

// TestJSONCodecThroughHandler runs unary and streaming calls with every
// JSON content type through a real handler, with and without gzip.
func TestJSONCodecThroughHandler(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	list := &fspb.ListDirResponse{}
	for range 200 {
		e := randEntry(r)
		e.Name, e.Path, e.Owner, e.Group, e.Permissions = "n ü", "/p", "o", "g", "-rw-r--r--"
		if e.SymlinkTarget != nil {
			e.SymlinkTarget = strp("/t")
		}
		e.Metadata = map[string]string{"k": "v\x01"}
		list.Entries = append(list.Entries, e)
	}
	mux := http.NewServeMux()
	mux.Handle(NewFilesystemHandler(fakeFS{list: list}))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	clients := map[string][]connect.ClientOption{
		"connect":     {connect.WithProtoJSON()},
		"connect gz":  {connect.WithProtoJSON(), connect.WithSendGzip()},
		"grpc-web":    {connect.WithProtoJSON(), connect.WithGRPCWeb()},
		"connect bin": nil,
	}
	for name, opts := range clients {
		t.Run(name, func(t *testing.T) {
			cl := filesystemconnect.NewFilesystemClient(srv.Client(), srv.URL, opts...)
			res, err := cl.ListDir(ctx, connect.NewRequest(&fspb.ListDirRequest{Path: "/"}))
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(res.Msg, list) {
				t.Fatal("listing differs after the round trip")
			}
			stream, err := cl.WatchDir(ctx, connect.NewRequest(&fspb.WatchDirRequest{Path: "/"}))
			if err != nil {
				t.Fatal(err)
			}
			defer stream.Close()
			var got []*fspb.WatchDirResponse
			for stream.Receive() {
				got = append(got, stream.Msg())
			}
			if err := stream.Err(); err != nil {
				t.Fatal(err)
			}
			if len(got) != 2 || got[0].GetStart() == nil || !proto.Equal(got[1].GetFilesystem().GetEntry(), list.Entries[0]) {
				t.Fatalf("stream = %v", got)
			}
		})
	}

	// What a JS or Python client sends: plain JSON, charset variant, an
	// unknown field; the answer parses back to the listing.
	for _, ct := range []string{"application/json", "application/json; charset=utf-8"} {
		res, err := http.Post(srv.URL+"/filesystem.Filesystem/ListDir", ct, strings.NewReader(`{"path":"/","futureField":true}`))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d %s", ct, res.StatusCode, body)
		}
		// Go's transport asked for gzip and unpacked it; gzip is announced once.
		if !res.Uncompressed || strings.Join(res.Header.Values("Accept-Encoding"), ",") != "gzip" {
			t.Fatalf("%s: uncompressed %v, Accept-Encoding %q", ct, res.Uncompressed, res.Header.Values("Accept-Encoding"))
		}
		var back fspb.ListDirResponse
		if err := protojson.Unmarshal(body, &back); err != nil || !proto.Equal(&back, list) {
			t.Fatalf("%s: %v", ct, err)
		}
	}
}

func BenchmarkJSONListDir10k(b *testing.B) {
	m := &fspb.ListDirResponse{}
	for i := range 10000 {
		m.Entries = append(m.Entries, &fspb.EntryInfo{
			Name: fmt.Sprintf("f%05d", i), Path: fmt.Sprintf("/var/tmp/envd-bench-123456/list/f%05d", i),
			Type: fspb.FileType_FILE_TYPE_FILE, Mode: 0o644, Permissions: "-rw-r--r--",
			Owner: "root", Group: "root", ModifiedTime: ts(1764350000, 123456789)})
	}
	b.Run("fast", func(b *testing.B) {
		var buf []byte
		for b.Loop() {
			var err error
			if buf, err = (JSONCodec{}).MarshalAppend(buf[:0], m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("protojson", func(b *testing.B) {
		var buf []byte
		for b.Loop() {
			var err error
			if buf, err = (protojson.MarshalOptions{}).MarshalAppend(buf[:0], m); err != nil {
				b.Fatal(err)
			}
		}
	})
}
