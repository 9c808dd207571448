// Package cgroups places processes into cgroup v2 groups at spawn time
// (clone3 CLONE_INTO_CGROUP, WIRE.md §9.5). It runs in envd-init, which sets up
// the layout and spawns envd-net into the forwarder group, and in envd-proc,
// which spawns user processes into the PTY and user groups.
package cgroups

// Kind names a group of processes with its own resource policy.
type Kind int

const (
	// System processes stay in envd's own cgroup (tag "_system").
	System Kind = iota
	// User holds ordinary user commands.
	User
	// PTY holds terminal sessions.
	PTY
	// Forwarder holds port forwarders.
	Forwarder
)

// Manager hands out the directory fd of a group for SysProcAttr.CgroupFD.
type Manager interface {
	// FD returns the group's open directory fd, or ok=false to spawn in
	// envd's own cgroup.
	FD(kind Kind) (fd int, ok bool)
	Close() error
}

// Noop places nothing: with --no-cgroups or where no cgroup2 is mounted.
type Noop struct{}

// FD implements Manager.
func (Noop) FD(Kind) (int, bool) { return -1, false }

// Close implements Manager.
func (Noop) Close() error { return nil }
