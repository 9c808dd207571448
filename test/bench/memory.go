package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/envd-project/envd/gen/process/processconnect"
	"github.com/envd-project/envd/test/envdtest"
)

// procKiB reads a "Key:   N kB" line of a /proc file.
func procKiB(path, key string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == key+":" {
			return strconv.Atoi(fields[1])
		}
	}
	return 0, fmt.Errorf("no %s in %s", key, path)
}

// pssKiB reads the proportional set size of pid: shared executable pages
// count once across the tree, as the kernel charges them.
func pssKiB(pid int) (int, error) {
	return procKiB(fmt.Sprintf("/proc/%d/smaps_rollup", pid), "Pss")
}

func benchMemory() error {
	e, err := envdtest.StartE()
	if err != nil {
		return err
	}
	defer e.Stop()
	// Serve a few calls first so the figure is of a used, then idle, tree.
	cl := processconnect.NewProcessClient(http.DefaultClient, e.URL)
	for i := 0; i < 20; i++ {
		if err := startTrue(context.Background(), cl); err != nil {
			return err
		}
	}
	// Idle: every process trims its heap 3 to 6 s after its last request.
	if short {
		time.Sleep(time.Second)
	} else {
		time.Sleep(8 * time.Second)
	}
	pids := map[string]int{"envd-init": e.Pid()}
	for _, p := range []string{"envd-proc", "envd-fs", "envd-net"} {
		pids[p] = e.PluginPid(p)
	}
	total := 0
	var parts []string
	for _, name := range []string{"envd-init", "envd-proc", "envd-fs", "envd-net"} {
		kib, err := pssKiB(pids[name])
		if err != nil {
			return err
		}
		total += kib
		parts = append(parts, fmt.Sprintf("%s %.1f", strings.TrimPrefix(name, "envd-"), float64(kib)/1024))
	}
	mib := float64(total) / 1024
	add("idle tree PSS, sum of 4 processes", fmt.Sprintf("%.1f MiB", mib), "< 20 MiB", check(mib < 20))
	add("  per process (MiB)", strings.Join(parts, ", "), "", nil)
	// What the trim costs: the idle tree maps its code back on demand.
	t0 := time.Now()
	if err := startTrue(context.Background(), cl); err != nil {
		return err
	}
	cold := time.Since(t0)
	t0 = time.Now()
	if err := startTrue(context.Background(), cl); err != nil {
		return err
	}
	add("  first Start after idle / the next one", fmt.Sprintf("%v / %v", cold.Round(10*time.Microsecond), time.Since(t0).Round(10*time.Microsecond)), "", nil)
	return nil
}

func benchColdStart() error {
	dir, err := envdtest.Bundle()
	if err != nil {
		return err
	}
	var runs []time.Duration
	for i := 0; i < 10; i++ {
		port, err := envdtest.FreePort()
		if err != nil {
			return err
		}
		url := fmt.Sprintf("http://127.0.0.1:%d", port)
		cl := processconnect.NewProcessClient(&http.Client{Transport: &http.Transport{}}, url)
		t0 := time.Now()
		cmd := exec.Command(filepath.Join(dir, "envd-init"), "--isnotfc", "--no-cgroups", "--port", strconv.Itoa(port))
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return err
		}
		var took time.Duration
		for deadline := t0.Add(10 * time.Second); time.Now().Before(deadline); {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := startTrue(ctx, cl)
			cancel()
			if err == nil {
				took = time.Since(t0)
				break
			}
			time.Sleep(500 * time.Microsecond)
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if took == 0 {
			return fmt.Errorf("no successful Start within 10s of exec")
		}
		runs = append(runs, took)
	}
	m := median(runs)
	add("cold start: exec to first successful Start (p50 of 10)", m.Round(100*time.Microsecond).String(), "< 30ms", check(m < 30*time.Millisecond))
	return nil
}
