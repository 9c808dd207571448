package ports

import (
	"fmt"
	"net/netip"
	"strings"

	controlpb "github.com/envd-project/envd/gen/control"
)

// OptionsFromConfig applies the control-API config pushed by envd-init to
// base (which carries what the config does not, like Interval):
// reserved_ports become Reserved and forward_address becomes ExternalAddrs.
// forward_address may list several addresses separated by commas, so an IPv6
// address can be added to 169.254.0.21; empty keeps base's addresses (and so
// the default). Bad values are an error and leave nothing half-applied.
func OptionsFromConfig(cfg *controlpb.Config, base Options) (Options, error) {
	o := base
	o.Reserved = nil
	for _, p := range cfg.GetReservedPorts() {
		if p == 0 || p > 65535 {
			return base, fmt.Errorf("reserved port %d out of range 1-65535", p)
		}
		o.Reserved = append(o.Reserved, uint16(p))
	}
	if s := strings.TrimSpace(cfg.GetForwardAddress()); s != "" {
		o.ExternalAddrs = nil
		for f := range strings.SplitSeq(s, ",") {
			a, err := netip.ParseAddr(strings.TrimSpace(f))
			if err != nil {
				return base, fmt.Errorf("forward address: %w", err)
			}
			if a = a.Unmap(); a.IsUnspecified() || a.IsLoopback() {
				return base, fmt.Errorf("forward address %s: must be a specific, non-loopback address", a)
			}
			o.ExternalAddrs = append(o.ExternalAddrs, a)
		}
	}
	return o, nil
}
