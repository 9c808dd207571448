package sysinit

import (
	"fmt"
	"net/netip"
	"strings"
)

// Params are the kernel command line parameters envd-init reads as a VM's
// init (documented in rootfs/README.md). The kernel passes dotted names to
// no one, so they are read back from /proc/cmdline.
type Params struct {
	// Root, RootFSType and RootRW are the kernel's own root=, rootfstype=
	// and rw; envd-init reads them only when it runs from an initramfs and
	// has to mount the real root itself.
	Root       string
	RootFSType string
	RootRW     bool
	// Init is the envd-init of the real root to exec after the initramfs
	// stage (envd.init=, default /usr/local/bin/envd-init).
	Init string
	// Net false (envd.net=off) leaves every interface but lo alone.
	Net bool
	// Iface is the interface to configure (envd.iface=, default eth0).
	Iface string
	// Addr is its address with prefix (envd.ip=, default 169.254.0.21/30).
	Addr netip.Prefix
	// Gateway is the default route's next hop (envd.gw=, default
	// 169.254.0.22; envd.gw=none adds no route).
	Gateway netip.Addr
	// DNS is the resolv.conf nameserver written when the file is missing
	// (envd.dns=, default 8.8.8.8).
	DNS string
	// Hostname (envd.hostname=) replaces the kernel's when set; otherwise a
	// kernel hostname is kept and "(none)" becomes "sandbox".
	Hostname string
	// Modules are the kernel modules to load with their dependencies
	// (envd.modules=a,b; envd.modules=off loads none).
	Modules []string
}

// DefaultModules are what a virtio VM needs when the kernel has them as
// modules (Debian's cloud kernel does): block, network and entropy over
// virtio-mmio (microvm, Firecracker) or virtio-pci.
var DefaultModules = []string{"virtio_mmio", "virtio_pci", "virtio_blk", "virtio_net", "virtio_rng"}

// Wrenn's VM network: the guest is .21 of a /30 and the host's tap is .22.
var (
	defaultAddr    = netip.MustParsePrefix("169.254.0.21/30")
	defaultGateway = netip.MustParseAddr("169.254.0.22")
)

// ParseCmdline reads the parameters out of a kernel command line. Bad
// values are reported and their defaults kept: a typo must not leave the
// VM without its network.
func ParseCmdline(cmdline string) (Params, []error) {
	p := Params{
		RootFSType: "ext4",
		Init:       "/usr/local/bin/envd-init",
		Net:        true,
		Iface:      "eth0",
		Addr:       defaultAddr,
		Gateway:    defaultGateway,
		DNS:        "8.8.8.8",
		Modules:    append([]string(nil), DefaultModules...),
	}
	var errs []error
	for _, field := range splitCmdline(cmdline) {
		if field == "--" {
			break // the rest is init's argv
		}
		key, val, _ := strings.Cut(field, "=")
		switch key {
		case "root":
			p.Root = val
		case "rootfstype":
			p.RootFSType = val
		case "rw":
			p.RootRW = true
		case "ro":
			p.RootRW = false
		case "envd.init":
			p.Init = val
		case "envd.net":
			switch val {
			case "off", "0", "no", "false":
				p.Net = false
			case "on", "1", "yes", "true":
				p.Net = true
			default:
				errs = append(errs, fmt.Errorf("envd.net=%q: want on or off", val))
			}
		case "envd.iface":
			if val == "" {
				errs = append(errs, fmt.Errorf("envd.iface is empty"))
				continue
			}
			p.Iface = val
		case "envd.ip":
			pfx, err := netip.ParsePrefix(val)
			if err != nil || !pfx.Addr().Is4() {
				errs = append(errs, fmt.Errorf("envd.ip=%q: want an IPv4 address with prefix length (a.b.c.d/n)", val))
				continue
			}
			p.Addr = pfx
		case "envd.gw":
			if val == "none" || val == "off" {
				p.Gateway = netip.Addr{}
				continue
			}
			a, err := netip.ParseAddr(val)
			if err != nil || !a.Is4() {
				errs = append(errs, fmt.Errorf("envd.gw=%q: want an IPv4 address or none", val))
				continue
			}
			p.Gateway = a
		case "envd.dns":
			p.DNS = val
		case "envd.hostname":
			p.Hostname = val
		case "envd.modules":
			p.Modules = nil
			if val == "off" || val == "none" || val == "" {
				continue
			}
			for _, m := range strings.Split(val, ",") {
				if m = strings.TrimSpace(m); m != "" {
					p.Modules = append(p.Modules, moduleName(m))
				}
			}
		}
	}
	return p, errs
}

// splitCmdline splits like the kernel does: on spaces, with double quotes
// grouping a value that holds spaces (the quotes are dropped).
func splitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

// moduleName is the kernel's spelling of a module name: '-' and '_' are the
// same to it.
func moduleName(s string) string { return strings.ReplaceAll(s, "-", "_") }
