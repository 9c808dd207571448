// Package paths resolves request paths the way every envd surface does
// (shared/spec/WIRE.md §6.1): empty → default workdir, "~" → the user's home
// from passwd, relative → joined onto the home and cleaned, absolute → as is.
package paths

import (
	"errors"
	"path/filepath"
	"strings"
)

// ErrOtherHome is returned for "~otheruser/..." paths.
var ErrOtherHome = errors.New("cannot expand user-specific home dir")

// Resolve applies the §6.1 rules for a user whose home is home. An empty
// path with no default workdir is relative, so it is the home.
func Resolve(p, home, defaultWorkdir string) (string, error) {
	if p == "" && defaultWorkdir != "" {
		return defaultWorkdir, nil
	}
	if strings.HasPrefix(p, "~") {
		if p == "~" {
			return home, nil
		}
		if !strings.HasPrefix(p, "~/") {
			return "", ErrOtherHome
		}
		return filepath.Join(home, p[2:]), nil
	}
	if filepath.IsAbs(p) {
		return p, nil
	}
	return filepath.Join(home, p), nil
}
