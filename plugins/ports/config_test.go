package ports

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	controlpb "github.com/envd-project/envd/gen/control"
)

func TestOptionsFromConfig(t *testing.T) {
	base := Options{Interval: 2 * time.Second}
	o, err := OptionsFromConfig(&controlpb.Config{
		ReservedPorts:  []uint32{49983, 5555},
		ForwardAddress: "169.254.0.21, fd00:e2b::1",
	}, base)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.Reserved, []uint16{49983, 5555}) || o.Interval != 2*time.Second ||
		!slices.Equal(o.ExternalAddrs, []netip.Addr{vmAddr4, vmAddr6}) {
		t.Fatalf("got %+v", o)
	}
	if o, err := OptionsFromConfig(&controlpb.Config{}, base); err != nil || o.ExternalAddrs != nil || o.Reserved != nil {
		t.Fatalf("empty config: %+v %v", o, err)
	}
	for _, cfg := range []*controlpb.Config{
		{ReservedPorts: []uint32{70000}},
		{ReservedPorts: []uint32{0}},
		{ForwardAddress: "169.254.0.300"},
		{ForwardAddress: "0.0.0.0"},
		{ForwardAddress: "127.0.0.1"},
		{ForwardAddress: "169.254.0.21,"},
	} {
		if o, err := OptionsFromConfig(cfg, base); err == nil {
			t.Errorf("%v: no error, got %+v", cfg, o)
		} else if o.Interval != base.Interval || o.ExternalAddrs != nil {
			t.Errorf("%v: error %v returned %+v, want base", cfg, err, o)
		}
	}
}
