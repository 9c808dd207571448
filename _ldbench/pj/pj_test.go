package pj

import (
	"fmt"
	"testing"

	fspb "github.com/envd-project/envd/gen/filesystem"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func msg() *fspb.ListDirResponse {
	r := &fspb.ListDirResponse{}
	for i := 0; i < 10000; i++ {
		r.Entries = append(r.Entries, &fspb.EntryInfo{Name: fmt.Sprintf("f%05d", i), Path: fmt.Sprintf("/var/tmp/envd-bench-123456/list/f%05d", i), Type: 1, Mode: 0o644, Permissions: "-rw-r--r--", Owner: "root", Group: "root", ModifiedTime: &timestamppb.Timestamp{Seconds: 1764350000, Nanos: 123456789}})
	}
	return r
}

func BenchmarkJSONMarshal(b *testing.B) {
	m := msg()
	for b.Loop() {
		protojson.Marshal(m)
	}
}
func BenchmarkJSONUnmarshal(b *testing.B) {
	m := msg()
	d, _ := protojson.Marshal(m)
	b.SetBytes(int64(len(d)))
	for b.Loop() {
		var x fspb.ListDirResponse
		protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(d, &x)
	}
}
func BenchmarkProtoMarshal(b *testing.B) {
	m := msg()
	for b.Loop() {
		proto.Marshal(m)
	}
}
func BenchmarkProtoUnmarshal(b *testing.B) {
	m := msg()
	d, _ := proto.Marshal(m)
	b.SetBytes(int64(len(d)))
	for b.Loop() {
		var x fspb.ListDirResponse
		proto.Unmarshal(d, &x)
	}
}
