// Package state is envd-init's truth about the sandbox and runs in envd-init:
// defaults, env vars, identity and the access token. Plugins get a copy (a
// control.Config) on every start and every change; they never own any of it.
package state

import (
	"maps"
	"sync"
	"time"

	controlpb "github.com/envd-project/envd/gen/control"
	"google.golang.org/protobuf/proto"
)

// Flavor names the ecosystem envd serves (WIRE.md §13).
type Flavor string

const (
	FlavorWrenn Flavor = "wrenn"
	FlavorE2B   Flavor = "e2b"
)

// EnvPrefix is the prefix of envd's internal env vars for the flavor.
func (f Flavor) EnvPrefix() string {
	if f == FlavorE2B {
		return "E2B_"
	}
	return "WRENN_"
}

// RunDir is where the sandbox identity files live for the flavor.
func (f Flavor) RunDir() string {
	if f == FlavorE2B {
		return "/run/e2b"
	}
	return "/run/wrenn"
}

// Store is safe for concurrent use. Every change bumps the generation and
// notifies the subscribers with the new plugin config.
type Store struct {
	mu       sync.Mutex
	base     *controlpb.Config // everything but env vars
	userEnv  map[string]string // from /init
	internal map[string]string // envd's own (*_SANDBOX, ...): win over userEnv
	token    string
	hasToken bool
	subs     []func(*controlpb.Config)
	lastInit time.Time // newest applied /init timestamp (zero: none yet)
}

// New starts with base (generation, env vars are managed by the store).
func New(base *controlpb.Config) *Store {
	b := proto.Clone(base).(*controlpb.Config)
	if b.DefaultUser == "" {
		b.DefaultUser = "root"
	}
	b.Generation = 1
	return &Store{base: b, userEnv: map[string]string{}, internal: map[string]string{}}
}

// Subscribe registers fn to be called (outside the lock, in order) with
// each new config.
func (s *Store) Subscribe(fn func(*controlpb.Config)) {
	s.mu.Lock()
	s.subs = append(s.subs, fn)
	s.mu.Unlock()
}

// Config returns the current plugin config.
func (s *Store) Config() *controlpb.Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.configLocked()
}

func (s *Store) configLocked() *controlpb.Config {
	c := proto.Clone(s.base).(*controlpb.Config)
	c.EnvVars = s.envLocked()
	return c
}

func (s *Store) envLocked() map[string]string {
	env := make(map[string]string, len(s.userEnv)+len(s.internal))
	maps.Copy(env, s.userEnv)
	maps.Copy(env, s.internal)
	return env
}

// Env returns the full default environment (user vars and internal ones).
func (s *Store) Env() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.envLocked()
}

// Flavor returns the configured flavor.
func (s *Store) Flavor() Flavor {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Flavor(s.base.Flavor)
}

// Token returns the access token and whether one is set.
func (s *Store) Token() (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.token, s.hasToken
}

// Mutation is a change applied under the store's lock.
type Mutation struct {
	s *Store
}

// SetDefaultUser sets the default user (ignored when empty).
func (m Mutation) SetDefaultUser(u string) {
	if u != "" {
		m.s.base.DefaultUser = u
	}
}

// SetDefaultWorkdir sets the default workdir (ignored when empty).
func (m Mutation) SetDefaultWorkdir(w string) {
	if w != "" {
		m.s.base.DefaultWorkdir = w
	}
}

// ReplaceUserEnv replaces the /init env vars (E2B semantics).
func (m Mutation) ReplaceUserEnv(env map[string]string) {
	m.s.userEnv = maps.Clone(env)
	if m.s.userEnv == nil {
		m.s.userEnv = map[string]string{}
	}
}

// MergeUserEnv merges into the /init env vars (Wrenn semantics).
func (m Mutation) MergeUserEnv(env map[string]string) {
	maps.Copy(m.s.userEnv, env)
}

// SetInternalEnv sets one of envd's own env vars.
func (m Mutation) SetInternalEnv(key, value string) {
	m.s.internal[key] = value
}

// IsInternalEnv reports whether key is one of envd's own env vars.
func (m Mutation) IsInternalEnv(key string) bool {
	_, ok := m.s.internal[key]
	return ok
}

// SetToken sets the access token.
func (m Mutation) SetToken(t string) { m.s.token, m.s.hasToken = t, true }

// ClearToken removes the access token.
func (m Mutation) ClearToken() { m.s.token, m.s.hasToken = "", false }

// Base gives direct access to the non-env part of the config.
func (m Mutation) Base() *controlpb.Config { return m.s.base }

// Update applies fn atomically, bumps the generation and notifies subscribers.
func (s *Store) Update(fn func(Mutation)) *controlpb.Config {
	s.mu.Lock()
	fn(Mutation{s: s})
	s.base.Generation++
	cfg := s.configLocked()
	subs := append([]func(*controlpb.Config){}, s.subs...)
	s.mu.Unlock()
	for _, sub := range subs {
		sub(cfg)
	}
	return cfg
}

// AdvanceInitTimestamp is /init's replay guard (WIRE.md §7.4 step 5): it
// records t and reports true only if t is strictly newer than every
// timestamp recorded before.
func (s *Store) AdvanceInitTimestamp(t time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.lastInit.IsZero() && !t.After(s.lastInit) {
		return false
	}
	s.lastInit = t
	return true
}

// LastInitTimestamp returns the newest applied /init timestamp (zero: none).
func (s *Store) LastInitTimestamp() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastInit
}
