package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"

	"github.com/envd-project/envd/test/envdtest"
)

// vmHWMKiB is the peak resident set of pid.
func vmHWMKiB(pid int) (int, error) {
	return procKiB(fmt.Sprintf("/proc/%d/status", pid), "VmHWM")
}

// pattern is an endless reader of non-zero bytes (no file needed for 1 GiB).
type pattern struct{ n int64 }

func (p *pattern) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = byte(p.n + int64(i))
	}
	p.n += int64(len(b))
	return len(b), nil
}

func benchBigUpload() error {
	e, err := envdtest.StartE()
	if err != nil {
		return err
	}
	defer e.Stop()
	dir, err := os.MkdirTemp("/var/tmp", "envd-bench-big-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	const size = 1 << 30
	before, err := vmHWMKiB(e.PluginPid("envd-fs"))
	if err != nil {
		return err
	}
	dst := filepath.Join(dir, "big")
	req, err := http.NewRequest(http.MethodPost, e.URL+"/files?path="+dst, io.LimitReader(&pattern{}, size))
	if err != nil {
		return err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	if err := do(req); err != nil {
		return err
	}
	if fi, err := os.Stat(dst); err != nil || fi.Size() != size {
		return fmt.Errorf("uploaded file: %v %v", fi, err)
	}
	after, err := vmHWMKiB(e.PluginPid("envd-fs"))
	if err != nil {
		return err
	}
	init, err := vmHWMKiB(e.Pid())
	if err != nil {
		return err
	}
	mib := float64(after) / 1024
	add("peak RSS of envd-fs during a 1 GiB upload", fmt.Sprintf("%.1f MiB (%.1f before)", mib, float64(before)/1024), "< 32 MiB", check(mib < 32))
	add("  peak RSS of envd-init meanwhile", fmt.Sprintf("%.1f MiB", float64(init)/1024), "", nil)
	return nil
}
