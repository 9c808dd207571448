// Package defaults holds a plugin's copy of the sandbox defaults that
// envd-init pushes over the control API; it runs in every plugin. envd-init
// owns the truth; a plugin only keeps the newest copy it was given.
package defaults

import (
	"sync"

	controlpb "github.com/envd-project/envd/gen/control"
	"google.golang.org/protobuf/proto"
)

// Store is safe for concurrent use.
type Store struct {
	mu  sync.RWMutex
	cfg *controlpb.Config
}

// NewStore starts with cfg (nil means root and no env vars).
func NewStore(cfg *controlpb.Config) *Store {
	if cfg == nil {
		cfg = &controlpb.Config{DefaultUser: "root"}
	}
	return &Store{cfg: cfg}
}

// Set replaces the config unless it is older than the one held; it reports
// whether it was applied.
func (s *Store) Set(cfg *controlpb.Config) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg != nil && cfg.GetGeneration() < s.cfg.GetGeneration() {
		return false
	}
	s.cfg = proto.Clone(cfg).(*controlpb.Config)
	return true
}

// Get returns the current config; callers must not modify it.
func (s *Store) Get() *controlpb.Config {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cfg
}

// User returns the user for a call: the named one, else the default.
func (s *Store) User(named string) string {
	if named != "" {
		return named
	}
	if u := s.Get().GetDefaultUser(); u != "" {
		return u
	}
	return "root"
}
