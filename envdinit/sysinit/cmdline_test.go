package sysinit

import (
	"net/netip"
	"reflect"
	"testing"
)

func TestParseCmdlineDefaults(t *testing.T) {
	p, errs := ParseCmdline("console=ttyS0 root=/dev/vda rw panic=-1\n")
	if len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
	if p.Root != "/dev/vda" || !p.RootRW || p.RootFSType != "ext4" {
		t.Errorf("root: %+v", p)
	}
	if !p.Net || p.Iface != "eth0" || p.Addr != netip.MustParsePrefix("169.254.0.21/30") ||
		p.Gateway != netip.MustParseAddr("169.254.0.22") {
		t.Errorf("network defaults (Wrenn's): %+v", p)
	}
	if p.Init != "/usr/local/bin/envd-init" || p.DNS != "8.8.8.8" || p.Hostname != "" {
		t.Errorf("defaults: %+v", p)
	}
	if !reflect.DeepEqual(p.Modules, DefaultModules) {
		t.Errorf("modules %v, want %v", p.Modules, DefaultModules)
	}
}

func TestParseCmdlineOverrides(t *testing.T) {
	p, errs := ParseCmdline(`root=/dev/vdb ro envd.ip=10.0.2.15/24 envd.gw=10.0.2.2 envd.iface=ens3 ` +
		`envd.dns=1.1.1.1 envd.hostname=box envd.modules=virtio-net,e1000 envd.init=/sbin/envd ` +
		`-- envd.net=off --isnotfc`)
	if len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
	want := Params{
		Root: "/dev/vdb", RootFSType: "ext4", RootRW: false, Init: "/sbin/envd", Net: true, Iface: "ens3",
		Addr: netip.MustParsePrefix("10.0.2.15/24"), Gateway: netip.MustParseAddr("10.0.2.2"),
		DNS: "1.1.1.1", Hostname: "box", Modules: []string{"virtio_net", "e1000"},
	}
	if !reflect.DeepEqual(p, want) {
		t.Errorf("got  %+v\nwant %+v (words after -- are init's, not ours)", p, want)
	}
}

func TestParseCmdlineOffAndErrors(t *testing.T) {
	p, errs := ParseCmdline(`envd.net=off envd.gw=none envd.modules=off envd.ip=fe80::1/64 envd.net=maybe envd.gw=x envd.iface=`)
	if p.Net {
		t.Error("envd.net=off must stick (a bad later value keeps it)")
	}
	if p.Gateway.IsValid() {
		t.Errorf("envd.gw=none gives no gateway, got %s", p.Gateway)
	}
	if len(p.Modules) != 0 {
		t.Errorf("envd.modules=off loads none, got %v", p.Modules)
	}
	if p.Addr != defaultAddr || p.Iface != "eth0" {
		t.Errorf("bad values keep the defaults: %+v", p)
	}
	if len(errs) != 4 {
		t.Errorf("want 4 errors (ip, net, gw, iface), got %d: %v", len(errs), errs)
	}
}

func TestSplitCmdlineQuotes(t *testing.T) {
	got := splitCmdline(`a  envd.hostname="my box" b="x y"z` + "\n")
	want := []string{"a", "envd.hostname=my box", "b=x yz"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestParseMode(t *testing.T) {
	for _, s := range []string{"auto", "on", "off"} {
		if m, err := ParseMode(s); err != nil || string(m) != s {
			t.Errorf("%s: %v %v", s, m, err)
		}
	}
	if _, err := ParseMode("yes"); err == nil {
		t.Error("yes must be rejected")
	}
}

// Outside a VM's boot (this test process is not PID 1, or /proc is
// mounted), auto must do nothing: no mounts, no console games.
func TestStartAutoIsInactiveHere(t *testing.T) {
	if s := Start(Auto); s.Active() {
		t.Fatal("sysinit active in a test process")
	}
	var s *System
	s.BringUp(nil)
	s.Requested(nil)
	s.Finish(nil)
	if s.Signals() != nil {
		t.Error("a nil System asks for no signals")
	}
}
