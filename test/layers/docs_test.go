package layers

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// docLayers are the folders whose packages must say in their doc comment
// where they run (docs/development.md, "Package doc comments").
var docLayers = []string{"cmd/", "envdinit/", "plugins/", "internal/", "test/"}

// runsIn is the phrase a non-test package's doc comment must carry: "runs
// in" followed by a process of the tree, or by every process or plugin.
// Line breaks count as spaces, so the phrase may wrap.
var runsIn = regexp.MustCompile(`(?i)\bruns\s+in\s+(envd-(init|proc|fs|net)\b|every\s+process\b|every\s+plugin\b)`)

// testOnly is what a package under test/ says instead.
var testOnly = regexp.MustCompile(`(?i)\btest-only\b`)

// pkgDoc is what the check needs to know of one package.
type pkgDoc struct {
	name string            // package name
	docs map[string]string // file name → text of its package doc comment, for files that have one
}

// packageDocs reads the package clause and doc comment of every Go file
// in the doc layers, keyed by the package's folder relative to root. A
// package's own files are its non-test files; a package made only of test
// files (test/integration, test/layers) is judged by those.
func packageDocs(t *testing.T, root string) map[string]pkgDoc {
	t.Helper()
	type file struct {
		name, pkg, doc string
		test           bool
	}
	byDir := map[string][]file{}
	fset := token.NewFileSet()
	for _, layer := range docLayers {
		err := filepath.WalkDir(filepath.Join(root, layer), func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				switch d.Name() {
				case "testdata", "node_modules":
					return filepath.SkipDir
				}
				return nil
			}
			if !strings.HasSuffix(path, ".go") {
				return nil
			}
			f, err := parser.ParseFile(fset, path, nil, parser.PackageClauseOnly|parser.ParseComments)
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, filepath.Dir(path))
			fl := file{name: d.Name(), pkg: f.Name.Name, test: strings.HasSuffix(path, "_test.go")}
			if f.Doc != nil {
				fl.doc = f.Doc.Text()
			}
			byDir[filepath.ToSlash(rel)] = append(byDir[filepath.ToSlash(rel)], fl)
			return nil
		})
		if err != nil {
			t.Fatalf("walk %s: %v", layer, err)
		}
	}
	out := map[string]pkgDoc{}
	for dir, files := range byDir {
		own := files[:0:0]
		for _, f := range files {
			if !f.test {
				own = append(own, f)
			}
		}
		if len(own) == 0 {
			// Test files only: the package is the one that is not an
			// external _test package.
			for _, f := range files {
				if !strings.HasSuffix(f.pkg, "_test") {
					own = append(own, f)
				}
			}
		}
		if len(own) == 0 {
			continue
		}
		p := pkgDoc{name: own[0].pkg, docs: map[string]string{}}
		for _, f := range own {
			if f.doc != "" {
				p.docs[f.name] = f.doc
			}
		}
		out[dir] = p
	}
	return out
}

// docViolations returns what is wrong with the doc comments of pkgs.
func docViolations(pkgs map[string]pkgDoc) []string {
	var bad []string
	for dir, p := range pkgs {
		var files []string
		for f := range p.docs {
			files = append(files, f)
		}
		sort.Strings(files)
		switch len(files) {
		case 0:
			bad = append(bad, dir+": no package doc comment (say what the package owns and where it runs)")
			continue
		case 1:
		default:
			bad = append(bad, dir+": package doc comment in "+strings.Join(files, ", ")+": keep one, in the main file")
			continue
		}
		doc := p.docs[files[0]]
		want := "Package " + p.name + " "
		if p.name == "main" {
			want = "Command "
		}
		if !strings.HasPrefix(doc, want) {
			bad = append(bad, dir+"/"+files[0]+": the package doc comment must start with \""+want+"\"")
		}
		if strings.HasPrefix(dir, "test/") {
			if !testOnly.MatchString(doc) {
				bad = append(bad, dir+"/"+files[0]+": the package doc comment must say it is Test-only")
			}
		} else if !runsIn.MatchString(doc) {
			bad = append(bad, dir+"/"+files[0]+": the package doc comment must say where it runs: "+
				`"runs in" envd-init, envd-proc, envd-fs, envd-net, every process or every plugin`)
		}
	}
	sort.Strings(bad)
	return bad
}

func TestPackagesSayWhereTheyRun(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found at %s: %v", root, err)
	}
	pkgs := packageDocs(t, root)
	// A walk that finds nothing would pass anything.
	for _, dir := range []string{"cmd/envd-init", "envdinit/app", "plugins/pluginkit/contract", "internal/users", "test/integration"} {
		if _, ok := pkgs[dir]; !ok {
			t.Fatalf("package %s not found: the walk is broken", dir)
		}
	}
	for _, v := range docViolations(pkgs) {
		t.Error(v)
	}
}

// The check must catch each kind of fault; without this a broken pattern
// would make the test above pass on anything.
func TestDocViolationsAreFound(t *testing.T) {
	one := func(name, file, doc string) pkgDoc {
		p := pkgDoc{name: name, docs: map[string]string{}}
		if doc != "" {
			p.docs[file] = doc
		}
		return p
	}
	bad := map[string]pkgDoc{
		"internal/nodoc":      one("nodoc", "a.go", ""),
		"internal/nowhere":    one("nowhere", "a.go", "Package nowhere reads files.\n"),
		"internal/vague":      one("vague", "a.go", "Package vague runs in the tree and talks to envd-init.\n"),
		"internal/wrongname":  one("right", "a.go", "Package wrong runs in envd-init.\n"),
		"cmd/envd-x":          one("main", "main.go", "Package main runs in envd-proc.\n"),
		"test/helper":         one("helper", "h.go", "Package helper starts envd; it runs in envd-init.\n"),
		"plugins/process/dup": {name: "dup", docs: map[string]string{"a.go": "Package dup runs in envd-proc.\n", "b.go": "Package dup runs in envd-proc.\n"}},
	}
	for dir, p := range bad {
		if got := docViolations(map[string]pkgDoc{dir: p}); len(got) != 1 {
			t.Errorf("%s: got %d violations %v, want 1", dir, len(got), got)
		}
	}
	good := map[string]pkgDoc{
		"envdinit/a":          one("a", "a.go", "Package a owns x. It runs in envd-init.\n"),
		"plugins/b":           one("b", "b.go", "Package b owns y; it runs in envd-proc\nand envd-fs.\n"),
		"plugins/c/plugin":    one("plugin", "p.go", "Package plugin (runs in envd-net) wires c.\n"),
		"internal/d":          one("d", "d.go", "Package d is shared, so it runs in every\nprocess.\n"),
		"plugins/pluginkit/e": one("e", "e.go", "Package e runs in every plugin.\n"),
		"cmd/envd-f":          one("main", "main.go", "Command envd-f runs in envd-fs.\n"),
		"test/g":              one("g", "g_test.go", "Package g checks z. Test-only.\n"),
	}
	if got := docViolations(good); len(got) != 0 {
		t.Errorf("good doc comments flagged: %v", got)
	}
}
