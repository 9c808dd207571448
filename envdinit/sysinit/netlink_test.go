package sysinit

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestConfigureInterfaceInNetns configures a veth named eth0 in a network
// namespace of the test's own, over the same rtnetlink calls PID 1 makes,
// and checks the result with iproute2.
func TestConfigureInterfaceInNetns(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("iproute2 missing")
	}
	ns := fmt.Sprintf("envd-sysinit-%d", os.Getpid())
	ip := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	ip("netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
	ip("-n", ns, "link", "set", "peer0", "up")

	type result struct {
		first, second bool
		errs          []error
	}
	done := make(chan result, 1)
	go func() {
		// This thread enters the namespace and is never unlocked, so the
		// runtime retires it with the goroutine instead of reusing it.
		runtime.LockOSThread()
		var r result
		defer func() { done <- r }()
		fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			r.errs = append(r.errs, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			r.errs = append(r.errs, err)
			return
		}
		if err := LoopbackUp(); err != nil {
			r.errs = append(r.errs, err)
		}
		addr, gw := netip.MustParsePrefix("169.254.0.21/30"), netip.MustParseAddr("169.254.0.22")
		if r.first, err = ConfigureInterface("eth0", addr, gw, 2*time.Second); err != nil {
			r.errs = append(r.errs, err)
		}
		// Already addressed: left alone, no error, nothing added twice.
		if r.second, err = ConfigureInterface("eth0", netip.MustParsePrefix("10.9.9.9/24"), gw, 2*time.Second); err != nil {
			r.errs = append(r.errs, err)
		}
		if _, err := ConfigureInterface("eth9", addr, gw, 100*time.Millisecond); err == nil {
			r.errs = append(r.errs, fmt.Errorf("a missing interface must be an error"))
		}
	}()
	r := <-done
	for _, err := range r.errs {
		t.Error(err)
	}
	if !r.first || r.second {
		t.Errorf("configured: first %v (want true), second %v (want false)", r.first, r.second)
	}
	addrs := ip("-n", ns, "-4", "-o", "addr", "show", "dev", "eth0")
	if !strings.Contains(addrs, "inet 169.254.0.21/30 brd 169.254.0.23") || strings.Contains(addrs, "10.9.9.9") {
		t.Errorf("eth0 addresses: %s", addrs)
	}
	if route := ip("-n", ns, "route", "show", "default"); !strings.Contains(route, "default via 169.254.0.22 dev eth0") {
		t.Errorf("default route: %q", route)
	}
	if lo := ip("-n", ns, "-o", "link", "show", "lo"); !strings.Contains(lo, "UP") {
		t.Errorf("lo not up: %s", lo)
	}
	if eth := ip("-n", ns, "-o", "link", "show", "eth0"); !strings.Contains(eth, ",UP") {
		t.Errorf("eth0 not up: %s", eth)
	}
}
