package hostapi

import (
	"encoding/pem"
	"errors"
	"fmt"
	"github.com/envd-project/envd/internal/atomicfile"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// caInstaller adds /init's caBundle to the system trust store (§7.4): the
// PEM text is appended to the system bundle (replacing the one appended
// before) and kept as a separate .crt file. The same input is a no-op.
type caInstaller struct {
	mu         sync.Mutex
	bundlePath string
	certPath   string
	appended   string // exact text appended last time
}

func (c *caInstaller) install(bundle string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	text := strings.TrimSpace(bundle) + "\n"
	if text == c.appended {
		return nil
	}
	if err := checkPEM(text); err != nil {
		return err
	}
	old, err := os.ReadFile(c.bundlePath)
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("read %s: %w", c.bundlePath, err)
	}
	sys := string(old)
	if c.appended != "" {
		if i := strings.LastIndex(sys, c.appended); i >= 0 {
			sys = sys[:i] + sys[i+len(c.appended):]
		}
	}
	if sys != "" && !strings.HasSuffix(sys, "\n") {
		sys += "\n"
	}
	if err := atomicfile.Write(c.bundlePath, sys+text, 0o644); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(c.certPath), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(c.certPath), err)
	}
	if err := atomicfile.Write(c.certPath, text, 0o644); err != nil {
		return err
	}
	c.appended = text
	return nil
}

// checkPEM accepts text made only of PEM CERTIFICATE blocks.
func checkPEM(text string) error {
	rest := []byte(text)
	n := 0
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return fmt.Errorf("invalid CA bundle: unexpected PEM block %q", block.Type)
		}
		n++
	}
	if n == 0 {
		return errors.New("invalid CA bundle: no PEM certificate found")
	}
	if len(strings.TrimSpace(string(rest))) > 0 {
		return errors.New("invalid CA bundle: trailing data after the last certificate")
	}
	return nil
}
