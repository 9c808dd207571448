package contract

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/hashicorp/go-plugin"
)

// Reattach says where a plugin started by hand (--debug-server, e.g. under
// a debugger) serves, so that envd-init attaches to it instead of starting
// its own. It is go-plugin's ReattachConfig in a form that survives JSON
// (go-plugin's holds a net.Addr interface).
type Reattach struct {
	Network         string `json:"network"`
	Addr            string `json:"addr"`
	Pid             int    `json:"pid"`
	ProtocolVersion int    `json:"protocol_version"`
}

// NewReattach describes a plugin server go-plugin started in this process.
func NewReattach(rc *plugin.ReattachConfig) Reattach {
	return Reattach{Network: rc.Addr.Network(), Addr: rc.Addr.String(), Pid: rc.Pid, ProtocolVersion: rc.ProtocolVersion}
}

// Config is the go-plugin client configuration for attaching. Test mode
// (as go-plugin calls it) means envd-init never kills the hand-started
// process: whoever started it decides when it ends.
func (r Reattach) Config() (*plugin.ReattachConfig, error) {
	var addr net.Addr
	switch r.Network {
	case "unix":
		addr = &net.UnixAddr{Net: "unix", Name: r.Addr}
	case "tcp":
		a, err := net.ResolveTCPAddr("tcp", r.Addr)
		if err != nil {
			return nil, fmt.Errorf("reattach address %q: %w", r.Addr, err)
		}
		addr = a
	default:
		return nil, fmt.Errorf("reattach network %q: want unix or tcp", r.Network)
	}
	if r.Pid <= 0 {
		return nil, errors.New("reattach info has no pid")
	}
	version := r.ProtocolVersion
	if version == 0 {
		version = int(Handshake.ProtocolVersion)
	}
	return &plugin.ReattachConfig{Protocol: plugin.ProtocolGRPC, ProtocolVersion: version, Addr: addr, Pid: r.Pid, Test: true}, nil
}

// LoadReattach reads reattach info given to envd-init's --reattach: the
// JSON itself, or the path of a file holding it (the plugin's
// --reattach-file). A file is read again on every attach, so a plugin
// restarted by hand is found without restarting envd-init.
func LoadReattach(src string) (Reattach, error) {
	var r Reattach
	data := []byte(src)
	if !strings.HasPrefix(strings.TrimSpace(src), "{") {
		b, err := os.ReadFile(src)
		if err != nil {
			return r, fmt.Errorf("reattach file: %w", err)
		}
		data = b
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("reattach info %q: %w", src, err)
	}
	if _, err := r.Config(); err != nil {
		return r, err
	}
	return r, nil
}
