// Package atomicfile replaces small files so that readers never see a
// partial one (a half-written CA bundle, a truncated sandbox id) and a
// read-only previous file is no obstacle. It runs in envd-init (host API and
// MMDS identity files).
package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Write replaces path with content and mode, creating its directory. A
// symlink is followed: its target is replaced and the link stays (distros
// link /etc/ssl/certs/ca-certificates.crt to their own bundle).
func Write(path, content string, mode os.FileMode) error {
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, werr := f.WriteString(content)
	cherr := f.Chmod(mode)
	cerr := f.Close()
	if err := errors.Join(werr, cherr, cerr); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
