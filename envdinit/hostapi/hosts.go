package hostapi

import (
	"fmt"
	"net/netip"
	"os"
	"strings"

	"go.uber.org/zap"

	"github.com/envd-project/envd/envdinit/state"
)

// eventsHost is the hyperloop host name of the flavor (§9.8).
func eventsHost(f state.Flavor) string {
	if f == state.FlavorE2B {
		return "events.e2b.local"
	}
	return "events.wrenn.local"
}

// setupHyperloop maps the events host to ip in the hosts file and
// publishes <P>EVENTS_ADDRESS; failures are only logged (§9.8).
func (a *API) setupHyperloop(ip string) {
	a.hostsMu.Lock()
	defer a.hostsMu.Unlock()
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		a.log.Error("hyperloop: invalid IP", zap.String("ip", ip), zap.Error(err))
		return
	}
	if err := rewriteHosts(a.opts.EtcHosts, addr, eventsHost(a.flavor)); err != nil {
		a.log.Error("hyperloop: cannot update the hosts file", zap.Error(err))
		return
	}
	key := a.flavor.EnvPrefix() + "EVENTS_ADDRESS"
	val := "http://" + ip
	if a.store.Env()[key] == val {
		return
	}
	a.store.Update(func(m state.Mutation) { m.SetInternalEnv(key, val) })
}

// rewriteHosts makes host resolve to addr only: the name is removed from
// every other line (lines left without names go), then one line is
// appended. A file that already maps host to addr alone is left untouched.
// The file is rewritten in place because /etc/hosts is often a bind mount.
func rewriteHosts(path string, addr netip.Addr, host string) error {
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	lines := strings.SplitAfter(string(data), "\n")
	var out strings.Builder
	found, other := false, false
	for _, line := range lines {
		if line == "" {
			continue
		}
		content, comment, hasComment := strings.Cut(strings.TrimRight(line, "\r\n"), "#")
		fields := strings.Fields(content)
		if len(fields) < 2 || !containsFold(fields[1:], host) {
			out.WriteString(line)
			if !strings.HasSuffix(line, "\n") {
				out.WriteByte('\n')
			}
			continue
		}
		if a, err := netip.ParseAddr(fields[0]); err == nil && a == addr && !found {
			found = true
			out.WriteString(line)
			if !strings.HasSuffix(line, "\n") {
				out.WriteByte('\n')
			}
			continue
		}
		other = true
		var keep []string
		for _, name := range fields[1:] {
			if !strings.EqualFold(name, host) {
				keep = append(keep, name)
			}
		}
		if len(keep) == 0 {
			continue
		}
		out.WriteString(fields[0] + "\t" + strings.Join(keep, " "))
		if hasComment {
			out.WriteString(" #" + comment)
		}
		out.WriteByte('\n')
	}
	if found && !other {
		return nil
	}
	if !found {
		out.WriteString(addr.String() + "\t" + host + "\n")
	}
	if err := os.WriteFile(path, []byte(out.String()), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}
