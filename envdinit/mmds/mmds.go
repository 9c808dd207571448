// Package mmds reads the sandbox identity from Firecracker's metadata
// service (WIRE.md §9.1) and publishes it as run-dir files and internal env
// vars; it runs in envd-init. Every key of the metadata object is optional:
// Wrenn's host agent writes only instanceID and envID.
package mmds

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/envd-project/envd/envdinit/reaper"
	"github.com/envd-project/envd/internal/atomicfile"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/envd-project/envd/envdinit/state"
)

const (
	// DefaultAddr is Firecracker's MMDS (host:port).
	DefaultAddr = "169.254.169.254:80"
	// DefaultTimeout bounds each HTTP request (E2B's value).
	DefaultTimeout = 10 * time.Second
	// DefaultPollInterval is the retry period of §9.1.
	DefaultPollInterval = 50 * time.Millisecond

	tokenTTLSeconds = "60"
	maxTokenBytes   = 4 << 10
	maxBodyBytes    = 1 << 20
)

// Metadata is the JSON object MMDS serves. Absent keys stay empty.
type Metadata struct {
	InstanceID      string `json:"instanceID"`
	EnvID           string `json:"envID"`
	Address         string `json:"address"`
	AccessTokenHash string `json:"accessTokenHash"`
}

// Client talks MMDS V2 (token session) over plain HTTP.
type Client struct {
	addr     string
	log      *zap.Logger
	run      reaper.RunFunc
	http     *http.Client
	interval time.Duration
	repair   func(ctx context.Context) error
}

// Option configures a Client.
type Option func(*Client)

// WithRunner runs commands (iptables) through run: envd-init's reaper.
func WithRunner(run reaper.RunFunc) Option {
	return func(c *Client) { c.run = run }
}

// WithTimeout changes the per-request timeout.
func WithTimeout(d time.Duration) Option {
	return func(c *Client) { c.http.Timeout = d }
}

// WithPollInterval changes the retry period of Poll.
func WithPollInterval(d time.Duration) Option {
	return func(c *Client) { c.interval = d }
}

// WithRepair sets what AccessTokenHash runs before its one retry (nil: none).
func WithRepair(fn func(ctx context.Context) error) Option {
	return func(c *Client) { c.repair = fn }
}

// NewClient talks to addr ("host:port"). Pointed at DefaultAddr it also
// re-pins the MMDS iptables route before retrying a failed hash lookup
// (E2B's self-heal, §9.1); elsewhere (tests on loopback) it never runs
// iptables.
func NewClient(addr string, log *zap.Logger, opts ...Option) *Client {
	if log == nil {
		log = zap.NewNop()
	}
	c := &Client{
		addr: addr,
		log:  log,
		http: &http.Client{
			Timeout: DefaultTimeout,
			// No proxy (the environment's proxy must never see MMDS) and
			// no keep-alive: a connection kept across a snapshot is dead.
			Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
		},
		interval: DefaultPollInterval,
		run:      reaper.ExecOutput,
	}
	if addr == DefaultAddr {
		c.repair = func(ctx context.Context) error { return PinRoute(ctx, log, c.run) }
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Addr returns the address the client talks to.
func (c *Client) Addr() string { return c.addr }

func (c *Client) token(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+c.addr+"/latest/api/token", http.NoBody)
	if err != nil {
		return "", fmt.Errorf("mmds token request: %w", err)
	}
	// Set raw: Firecracker documents the header in this spelling.
	req.Header["X-metadata-token-ttl-seconds"] = []string{tokenTTLSeconds}
	body, err := c.do(req, maxTokenBytes)
	if err != nil {
		return "", fmt.Errorf("mmds token: %w", err)
	}
	tok := string(bytes.TrimSpace(body))
	if tok == "" {
		return "", errors.New("mmds token: empty token")
	}
	return tok, nil
}

func (c *Client) do(req *http.Request, limit int64) ([]byte, error) {
	res, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", res.Status)
	}
	if int64(len(body)) > limit {
		return nil, fmt.Errorf("body larger than %d bytes", limit)
	}
	return body, nil
}

// Get runs one token session and returns the metadata.
func (c *Client) Get(ctx context.Context) (*Metadata, error) {
	tok, err := c.token(ctx)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.addr+"/", http.NoBody)
	if err != nil {
		return nil, fmt.Errorf("mmds request: %w", err)
	}
	req.Header["X-metadata-token"] = []string{tok}
	req.Header.Set("Accept", "application/json")
	body, err := c.do(req, maxBodyBytes)
	if err != nil {
		return nil, fmt.Errorf("mmds metadata: %w", err)
	}
	var md Metadata
	if err := json.Unmarshal(body, &md); err != nil {
		return nil, fmt.Errorf("mmds metadata: decode: %w", err)
	}
	return &md, nil
}

// AccessTokenHash returns the accessTokenHash key ("" when absent). A failed
// lookup runs the repair hook (if any) and is retried once.
func (c *Client) AccessTokenHash(ctx context.Context) (string, error) {
	md, err := c.Get(ctx)
	if err != nil && c.repair != nil && ctx.Err() == nil {
		if rerr := c.repair(ctx); rerr != nil {
			c.log.Warn("mmds: route repair failed", zap.Error(rerr))
		}
		md, err = c.Get(ctx)
	}
	if err != nil {
		return "", err
	}
	return md.AccessTokenHash, nil
}

// Poll calls Get every poll interval until one succeeds or ctx ends.
// Failures are logged when they change and on giving up.
func (c *Client) Poll(ctx context.Context) (*Metadata, error) {
	t := time.NewTicker(c.interval)
	defer t.Stop()
	var lastErr error
	var lastMsg string
	attempts := 0
	for {
		md, err := c.Get(ctx)
		attempts++
		if err == nil {
			if lastErr != nil {
				c.log.Info("mmds reachable", zap.Int("attempts", attempts))
			}
			return md, nil
		}
		lastErr = err
		if msg := err.Error(); msg != lastMsg {
			c.log.Warn("mmds poll failed, retrying", zap.Error(err), zap.Int("attempt", attempts))
			lastMsg = msg
		}
		select {
		case <-ctx.Done():
			c.log.Warn("mmds: gave up polling", zap.Error(ctx.Err()), zap.NamedError("last", lastErr), zap.Int("attempts", attempts))
			return nil, fmt.Errorf("mmds poll: %w (last error: %v)", ctx.Err(), lastErr)
		case <-t.C:
		}
	}
}

// Refresh polls until success, then publishes the identity (Apply).
func (c *Client) Refresh(ctx context.Context, store *state.Store, runDir string) (*Metadata, error) {
	md, err := c.Poll(ctx)
	if err != nil {
		return nil, err
	}
	if err := Apply(md, store, runDir, c.log); err != nil {
		return md, err
	}
	return md, nil
}

// Apply writes <runDir>/.<P>SANDBOX_ID and .<P>TEMPLATE_ID (mode 0666, raw
// value, no newline) and sets the matching internal env vars, P being the
// flavor's prefix. Absent keys are skipped with a log line.
func Apply(md *Metadata, store *state.Store, runDir string, log *zap.Logger) error {
	if log == nil {
		log = zap.NewNop()
	}
	prefix := store.Flavor().EnvPrefix()
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return fmt.Errorf("create run dir: %w", err)
	}
	set := map[string]string{}
	var errs []error
	for _, kv := range []struct{ name, value string }{
		{prefix + "SANDBOX_ID", md.InstanceID},
		{prefix + "TEMPLATE_ID", md.EnvID},
	} {
		if kv.value == "" {
			log.Warn("mmds: key absent, not published", zap.String("name", kv.name))
			continue
		}
		set[kv.name] = kv.value
		if err := atomicfile.Write(filepath.Join(runDir, "."+kv.name), kv.value, 0o666); err != nil {
			log.Error("mmds: cannot write identity file", zap.Error(err))
			errs = append(errs, err)
		}
	}
	if len(set) > 0 {
		env := store.Env()
		changed := false
		for k, v := range set {
			if env[k] != v {
				changed = true
			}
		}
		if changed {
			store.Update(func(m state.Mutation) {
				for k, v := range set {
					m.SetInternalEnv(k, v)
				}
			})
		}
	}
	return errors.Join(errs...)
}

// MarkSandbox creates runDir (0755) and writes .<P>SANDBOX (mode 0444)
// with "true" in a Firecracker VM and "false" with --isnotfc, and sets the
// env var <P>SANDBOX to the same.
func MarkSandbox(store *state.Store, runDir string, isFC bool) error {
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return fmt.Errorf("create run dir: %w", err)
	}
	name := store.Flavor().EnvPrefix() + "SANDBOX"
	val := "false"
	if isFC {
		val = "true"
	}
	err := atomicfile.Write(filepath.Join(runDir, "."+name), val, 0o444)
	store.Update(func(m state.Mutation) { m.SetInternalEnv(name, val) })
	return err
}

// PinRoute puts a RETURN rule for 169.254.169.254:80 at the top of nat
// PREROUTING and OUTPUT (delete, then insert at 1), so that a user's
// redirect rules cannot shadow MMDS (E2B's self-heal, §9.1).
func PinRoute(ctx context.Context, log *zap.Logger, run reaper.RunFunc) error {
	bin, err := exec.LookPath("iptables")
	if err != nil {
		return fmt.Errorf("pin mmds route: %w", err)
	}
	rule := []string{"-d", "169.254.169.254", "-p", "tcp", "--dport", "80", "-j", "RETURN"}
	var errs []error
	for _, chain := range []string{"PREROUTING", "OUTPUT"} {
		del := append([]string{"-w", "5", "-t", "nat", "-D", chain}, rule...)
		// Absent rule: nothing to delete, not an error.
		_, _ = run(ctx, bin, del...)
		ins := append([]string{"-w", "5", "-t", "nat", "-I", chain, "1"}, rule...)
		if out, err := run(ctx, bin, ins...); err != nil {
			errs = append(errs, fmt.Errorf("iptables -I %s: %w: %s", chain, err, bytes.TrimSpace(out)))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("pin mmds route: %w", err)
	}
	log.Info("mmds route pinned")
	return nil
}
