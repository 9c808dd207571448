package sysinit

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ModuleIndex maps module names to their .ko files under one
// /lib/modules/<release> tree. Debian's kernel package ships no modules.dep
// (depmod runs in its postinst), so dependencies are read from each
// module's own .modinfo section.
type ModuleIndex struct {
	dir   string
	paths map[string]string
}

// IndexModules walks dir (usually /lib/modules/$(uname -r)) for .ko files.
func IndexModules(dir string) (*ModuleIndex, error) {
	idx := &ModuleIndex{dir: dir, paths: map[string]string{}}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(d.Name(), ".ko") {
			idx.paths[moduleName(strings.TrimSuffix(d.Name(), ".ko"))] = path
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules in %s: %w", dir, err)
	}
	return idx, nil
}

// Path returns the .ko file of module name.
func (x *ModuleIndex) Path(name string) (string, bool) {
	p, ok := x.paths[moduleName(name)]
	return p, ok
}

// Depends reads the depends= entry of a module's .modinfo section.
func Depends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s has no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read .modinfo of %s: %w", path, err)
	}
	var deps []string
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			for _, d := range strings.Split(string(v), ",") {
				if d != "" {
					deps = append(deps, moduleName(d))
				}
			}
		}
	}
	return deps, nil
}

// Order returns the modules to load for wanted, each after everything it
// depends on and each once. Wanted modules that are not in the tree (built
// into this kernel, or not built at all) are returned in missing; a
// dependency that cannot be found or read is an error for its dependents.
func (x *ModuleIndex) Order(wanted []string) (order, missing []string, err error) {
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var errs []error
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch state[name] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " -> "))
		}
		path, ok := x.paths[name]
		if !ok {
			return fmt.Errorf("module %s (needed by %s) not found under %s", name, strings.Join(chain, " -> "), x.dir)
		}
		state[name] = visiting
		deps, err := Depends(path)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = done
		order = append(order, name)
		return nil
	}
	for _, w := range wanted {
		w = moduleName(w)
		if _, ok := x.paths[w]; !ok {
			missing = append(missing, w)
			continue
		}
		if err := visit(w, nil); err != nil {
			errs = append(errs, err)
		}
	}
	return order, missing, errors.Join(errs...)
}

// LoadModule loads one .ko file with finit_module(2). A module that is
// already loaded (or built in under the same name) is not an error.
func LoadModule(path string) (loaded bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("open module: %w", err)
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return false, nil
		}
		return false, fmt.Errorf("finit_module(%s): %w", path, err)
	}
	return true, nil
}

// kernelRelease is uname -r.
func kernelRelease() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}
