package sysinit

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// moduleTree finds a real /lib/modules/<release> tree that holds the
// virtio modules: ENVD_MODULES_DIR, the kernel make vm-test caches, or the
// host's own.
func moduleTree(t *testing.T) string {
	t.Helper()
	var candidates []string
	if d := os.Getenv("ENVD_MODULES_DIR"); d != "" {
		candidates = append(candidates, d)
	}
	cached, _ := filepath.Glob("../../.cache/vm/linux-image-*/lib/modules/*")
	candidates = append(candidates, cached...)
	if rel, err := kernelRelease(); err == nil {
		candidates = append(candidates, filepath.Join("/lib/modules", rel))
	}
	for _, d := range candidates {
		idx, err := IndexModules(d)
		if err != nil {
			continue
		}
		if _, ok := idx.Path("virtio_net"); ok {
			return d
		}
	}
	t.Skip("no kernel module tree with virtio_net.ko here (make vm-test caches one; or set ENVD_MODULES_DIR)")
	return ""
}

func TestModuleOrderFromRealKoFiles(t *testing.T) {
	dir := moduleTree(t)
	idx, err := IndexModules(dir)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := idx.Path("virtio-net")
	deps, err := Depends(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"virtio", "virtio_ring", "net_failover"} {
		if !slices.Contains(deps, d) {
			t.Errorf("virtio_net depends=%v lacks %s", deps, d)
		}
	}
	order, missing, err := idx.Order([]string{"virtio_net", "virtio_blk", "virtio_mmio", "no_such_module"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(missing, []string{"no_such_module"}) {
		t.Errorf("missing %v", missing)
	}
	pos := map[string]int{}
	for i, m := range order {
		if _, dup := pos[m]; dup {
			t.Errorf("%s listed twice in %v", m, order)
		}
		pos[m] = i
	}
	before := [][2]string{
		{"virtio_ring", "virtio_net"}, {"virtio", "virtio_net"}, {"failover", "net_failover"},
		{"net_failover", "virtio_net"}, {"virtio", "virtio_blk"}, {"virtio_ring", "virtio_mmio"},
	}
	for _, b := range before {
		i, ok1 := pos[b[0]]
		j, ok2 := pos[b[1]]
		if !ok1 || !ok2 || i >= j {
			t.Errorf("%s must come before %s in %v", b[0], b[1], order)
		}
	}
	// Each module comes after everything its own .modinfo names.
	for _, m := range order {
		p, _ := idx.Path(m)
		ds, err := Depends(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if pos[d] >= pos[m] {
				t.Errorf("%s loaded before its dependency %s: %v", m, d, order)
			}
		}
	}
}

func TestDependsRejectsNonModules(t *testing.T) {
	f := filepath.Join(t.TempDir(), "bogus.ko")
	if err := os.WriteFile(f, []byte("not an ELF file"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Depends(f); err == nil {
		t.Error("a non-ELF .ko must be an error")
	}
	idx, err := IndexModules(filepath.Dir(f))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := idx.Order([]string{"bogus"}); err == nil {
		t.Error("ordering an unreadable module must fail")
	}
}
