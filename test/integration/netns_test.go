package integration

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	procpb "github.com/envd-project/envd/gen/process"
	"github.com/envd-project/envd/gen/process/processconnect"
	"github.com/envd-project/envd/test/envdtest"
	"golang.org/x/sys/unix"
)

// netnsPair makes two test hosts joined by a veth: "vm" (169.254.0.21,
// where envd runs) and "host" (169.254.0.22, where the client is). All
// traffic of the test stays inside them.
func netnsPair(t *testing.T) (vm, host string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("creating network namespaces needs root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("no ip(8) to create network namespaces")
	}
	id := fmt.Sprintf("%d", os.Getpid())
	vm, host = "envdit-vm-"+id, "envdit-host-"+id
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "del", vm).Run()
		_ = exec.Command("ip", "netns", "del", host).Run()
	})
	run("netns", "add", vm)
	run("netns", "add", host)
	run("link", "add", "veth-envdit", "netns", vm, "type", "veth", "peer", "name", "veth-envdit-h", "netns", host)
	run("-n", vm, "addr", "add", "169.254.0.21/30", "dev", "veth-envdit")
	run("-n", host, "addr", "add", "169.254.0.22/30", "dev", "veth-envdit-h")
	for _, ns := range []string{vm, host} {
		run("-n", ns, "link", "set", "lo", "up")
	}
	run("-n", vm, "link", "set", "veth-envdit", "up")
	run("-n", host, "link", "set", "veth-envdit-h", "up")
	return vm, host
}

// dialerIn dials from inside the named network namespace: the socket is
// made on a thread moved there, which is thrown away afterwards.
func dialerIn(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
			f, err := os.Open(filepath.Join("/run/netns", ns))
			if err != nil {
				ch <- result{nil, err}
				return
			}
			defer f.Close()
			if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
				ch <- result{nil, err}
				return
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			ch <- result{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}

func TestPortForwardThroughTree(t *testing.T) {
	vm, host := netnsPair(t)
	// A private bundle: the test replaces envd-net's file (hot-swap).
	dir := bundleCopy(t)
	const envdPort, userPort = 49983, 18123
	cmd := exec.Command("ip", "netns", "exec", vm, filepath.Join(dir, "envd-init"), "--isnotfc", "--no-cgroups", "--port", fmt.Sprint(envdPort))
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	// No Pdeathsig: it fires when the forking thread exits, and dialerIn
	// throws threads away.
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("envd log:\n%s", log.String())
		}
	})
	client := &http.Client{Transport: &http.Transport{DialContext: dialerIn(host), DisableKeepAlives: true}, Timeout: 5 * time.Second}
	envdURL := fmt.Sprintf("http://169.254.0.21:%d", envdPort)
	userURL := fmt.Sprintf("http://169.254.0.21:%d", userPort)
	ctx := envdtest.Ctx(t, 60*time.Second)
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for !ok() {
			if ctx.Err() != nil {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	reachable := func(url string) bool {
		res, err := client.Post(url+"/process.Process/List", "application/json", strings.NewReader("{}"))
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	}
	// envd itself listens on every address: reachable directly, never forwarded.
	waitFor("envd", func() bool { return reachable(envdURL) })

	// A user server on loopback only: a standalone envd-proc is a handy HTTP server.
	cl := processconnect.NewProcessClient(client, envdURL)
	tag := "loopback-server"
	s, err := cl.Start(ctx, connect.NewRequest(&procpb.StartRequest{Tag: &tag, Process: &procpb.ProcessConfig{
		Cmd: filepath.Join(dir, "envd-proc"), Args: []string{"--standalone", "--addr", "127.0.0.1", "--port", fmt.Sprint(userPort), "--no-cgroups"},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	// Keep the server's output for the failure message.
	var serverOut collected
	serverDone := make(chan struct{})
	go func() {
		defer close(serverDone)
		for s.Receive() {
			serverOut.add(s.Msg().GetEvent())
		}
	}()
	t.Cleanup(func() {
		s.Close()
		<-serverDone
		if t.Failed() {
			t.Logf("user server: end %v\nstdout %s\nstderr %s", serverOut.end, serverOut.stdout.String(), serverOut.stderr.String())
		}
	})
	t0 := time.Now()
	waitFor("the forward of a loopback listener", func() bool { return reachable(userURL) })
	t.Logf("listen to reachable from the other namespace: %v", time.Since(t0))

	// A crash of envd-net costs the forwarding only until it is back.
	// ip netns exec execs envd-init, so its pid is envd-init's.
	// envdNet is a running envd-net child other than those in not (0 if
	// none): a killed one stays a child, as a zombie, until envd-init reaps
	// it, and a replaced one while it drains.
	envdNet := func(not ...int) int {
		for _, pid := range envdtest.Children(cmd.Process.Pid) {
			stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if !slices.Contains(not, pid) && strings.Contains(string(stat), "(envd-net) ") && !strings.Contains(string(stat), ") Z ") {
				return pid
			}
		}
		return 0
	}
	killedNet := envdNet(0)
	if killedNet == 0 || syscall.Kill(killedNet, syscall.SIGKILL) != nil {
		t.Fatal("no envd-net child to kill")
	}
	waitFor("a restarted envd-net", func() bool { return envdNet(killedNet) != 0 })
	waitFor("forwarding after an envd-net restart", func() bool { return reachable(userURL) })

	// A hot-swap of envd-net (its file replaced, as make swap-envd-net
	// does): the forward is back within one scan interval (1 s) of the new
	// envd-net's start, plus its start on a loaded machine.
	oldNet := envdNet(killedNet)
	replaceFile(t, dir, "envd-net")
	t0 = time.Now()
	// The old one gives its forwards up when it hands over; the new one
	// binds them on its first scan.
	waitFor("a new envd-net", func() bool { return envdNet(oldNet, killedNet) != 0 })
	swappedNet := envdNet(oldNet, killedNet)
	waitFor("forwarding after an envd-net swap", func() bool { return reachable(userURL) })
	if syscall.Kill(oldNet, 0) == nil {
		t.Logf("forwarded again while the replaced envd-net was still draining")
	}
	t.Logf("envd-net swap: forward reachable again %v after the file was replaced", time.Since(t0))

	// Snapshot prepare stops forwarding; recovery restarts it.
	res, err := client.Post(envdURL+"/snapshot/prepare", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if reachable(userURL) {
		t.Error("port still forwarded after /snapshot/prepare")
	}
	// An envd-net that starts between the prepare and the restore (a
	// crash) stays quiesced too: no forward for two scan intervals.
	if syscall.Kill(swappedNet, syscall.SIGKILL) != nil {
		t.Fatal("no envd-net child to kill after the prepare")
	}
	waitFor("envd-net restarted after the prepare", func() bool { return envdNet(oldNet, killedNet, swappedNet) != 0 })
	for end := time.Now().Add(2500 * time.Millisecond); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if reachable(userURL) {
			t.Error("an envd-net restarted after /snapshot/prepare forwards before the restore")
			break
		}
	}
	res, err = client.Get(envdURL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	waitFor("forwarding after post-restore recovery", func() bool { return reachable(userURL) })

	// The forward goes away with the server.
	sel := &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Tag{Tag: tag}}
	if _, err := cl.SendSignal(ctx, connect.NewRequest(&procpb.SendSignalRequest{Process: sel, Signal: procpb.Signal_SIGNAL_SIGKILL})); err != nil {
		t.Fatal(err)
	}
	waitFor("the forward to be removed", func() bool { return !reachable(userURL) })
}
