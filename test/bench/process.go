package main

import (
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"connectrpc.com/connect"
	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/gen/process/processconnect"
	"github.com/envd-project/envd/plugins/process"
	"github.com/envd-project/envd/test/envdtest"
)

// startRuns is how many Starts each target gets (10 in -short mode).
var startRuns = 300

// startTrue runs /bin/true through Start until its end event.
func startTrue(ctx context.Context, cl processconnect.ProcessClient) error {
	stream, err := cl.Start(ctx, connect.NewRequest(&procpb.StartRequest{
		Process: &procpb.ProcessConfig{Cmd: "/bin/true"}, Stdin: new(bool),
	}))
	if err != nil {
		return err
	}
	defer stream.Close()
	for stream.Receive() {
		if e := stream.Msg().GetEvent().GetEnd(); e != nil && e.GetExitCode() != 0 {
			return fmt.Errorf("/bin/true ended %v", e)
		}
	}
	return stream.Err()
}

// timeStarts interleaves calls to each target so that drift in the
// machine's load hits all of them alike.
func timeStarts(targets []func() error) ([][]time.Duration, error) {
	out := make([][]time.Duration, len(targets))
	for i := 0; i < startRuns; i++ {
		for j, fn := range targets {
			t0 := time.Now()
			if err := fn(); err != nil {
				return nil, err
			}
			out[j] = append(out[j], time.Since(t0))
		}
	}
	return out, nil
}

// standalone starts bin/envd-proc --standalone on a free port.
func standalone(plugin string) (url string, stop func(), err error) {
	dir, err := envdtest.Bundle()
	if err != nil {
		return "", nil, err
	}
	port, err := envdtest.FreePort()
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(filepath.Join(dir, plugin), "--standalone", "--port", strconv.Itoa(port), "--no-cgroups")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop = func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }
	url = fmt.Sprintf("http://127.0.0.1:%d", port)
	for i := 0; i < 500; i++ {
		if res, err := http.Post(url+"/process.Process/List", "application/json", nil); err == nil {
			res.Body.Close()
			return url, stop, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	return "", nil, fmt.Errorf("standalone %s did not come up", plugin)
}

func benchProcess() error {
	e, err := envdtest.StartE()
	if err != nil {
		return err
	}
	defer e.Stop()
	url, stop, err := standalone("envd-proc")
	if err != nil {
		return err
	}
	defer stop()
	ctx := context.Background()
	viaInit := processconnect.NewProcessClient(http.DefaultClient, e.URL)
	direct := processconnect.NewProcessClient(http.DefaultClient, url)
	argv := process.WrapperArgv("/bin/true", nil)
	forkExec := func() error {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Stdout, cmd.Stderr = nil, nil
		return cmd.Run()
	}
	// Warm up connections and page caches.
	for i := 0; i < 20; i++ {
		if err := startTrue(ctx, viaInit); err != nil {
			return err
		}
		if err := startTrue(ctx, direct); err != nil {
			return err
		}
	}
	d, err := timeStarts([]func() error{
		func() error { return startTrue(ctx, viaInit) },
		func() error { return startTrue(ctx, direct) },
		forkExec,
	})
	if err != nil {
		return err
	}
	mi, md, mf := median(d[0]), median(d[1]), median(d[2])
	add("Start /bin/true via envd-init (p50)", mi.Round(time.Microsecond).String(), "", nil)
	add("Start /bin/true via standalone envd-proc (p50)", md.Round(time.Microsecond).String(), "", nil)
	add("fork/exec of the /bin/sh wrapper from Go (p50)", mf.Round(time.Microsecond).String(), "", nil)
	r1 := float64(mi) / float64(md)
	add("  ratio init / standalone", fmt.Sprintf("%.2fx", r1), "<= 1.15x", check(r1 <= 1.15))
	r2 := float64(mi) / float64(mf)
	add("  ratio init / raw fork+exec", fmt.Sprintf("%.2fx", r2), "<= 2x", check(r2 <= 2))
	return nil
}
