package contract

import (
	"os"
	"path/filepath"
	"testing"
)

func TestLoadReattach(t *testing.T) {
	const js = `{"network":"unix","addr":"/run/envd/plugin1","pid":42,"protocol_version":1}`
	file := filepath.Join(t.TempDir(), "r.json")
	if err := os.WriteFile(file, []byte(js+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, src := range []string{js, file} {
		r, err := LoadReattach(src)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		rc, err := r.Config()
		if err != nil {
			t.Fatal(err)
		}
		if rc.Pid != 42 || rc.Addr.Network() != "unix" || rc.Addr.String() != "/run/envd/plugin1" || !rc.Test || rc.Protocol != "grpc" {
			t.Errorf("%s: %+v", src, rc)
		}
	}
	for _, bad := range []string{
		`{"network":"udp","addr":"x","pid":1}`,
		`{"network":"unix","addr":"/x"}`,
		`{"network":`,
		filepath.Join(t.TempDir(), "missing.json"),
	} {
		if _, err := LoadReattach(bad); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}
