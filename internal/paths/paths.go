// Package paths resolves request paths the way every envd surface does
// (WIRE.md §6.1); it runs in envd-proc (cwd) and envd-fs (every path). Empty →
// default workdir, which then goes through the same rules as any path; "~" →
// the user's home from passwd; relative → joined onto the home and cleaned;
// absolute → as is.
package paths

import (
	"errors"
	"path/filepath"
)

// ErrOtherHome is returned for "~otheruser/..." paths.
var ErrOtherHome = errors.New("cannot expand user-specific home dir")

// Resolve applies the §6.1 rules for a user whose home is home. A default
// workdir is itself a request path ("~/work" and "work" are under the
// home); with neither a path nor a default, the result is the home. A user
// with no home resolves relative paths against envd's working directory,
// as the reference does.
func Resolve(p, home, defaultWorkdir string) (string, error) {
	if p == "" {
		p = defaultWorkdir
	}
	if len(p) > 0 && p[0] == '~' {
		if len(p) > 1 && p[1] != '/' && p[1] != '\\' {
			return "", ErrOtherHome
		}
		p = filepath.Join(home, p[1:])
	}
	if filepath.IsAbs(p) {
		return p, nil
	}
	return filepath.Abs(filepath.Join(home, p))
}
