package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/plugins/pluginkit/contract"
	"github.com/envd-project/envd/test/envdtest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The hop floor: a bare grpc-go unary call between two processes over a
// Unix socket, with the hop's own dial and server options and one P on
// each side, as envd-init and a plugin run. Whatever the tree spends on a
// Stat above the standalone envd-fs beyond this floor is our own code (the
// front door, the adapters, the interceptors), not the gRPC round trip.
// The bench binary plays both roles (floorRoleEnv), so the figures are of
// two processes that do nothing else.

const (
	floorRoleEnv = "ENVD_BENCH_FLOOR_ROLE" // "server" or "client"
	floorSockEnv = "ENVD_BENCH_FLOOR_SOCK"
	floorPidEnv  = "ENVD_BENCH_FLOOR_SERVER_PID"
	floorNEnv    = "ENVD_BENCH_FLOOR_CALLS"
)

// floorResult is what the client role reports (JSON on its stdout).
type floorResult struct {
	P50Ns, P90Ns             int64
	ClientCPUNs, ServerCPUNs int64 // over Calls calls
	Calls                    int
}

// floorRole runs the role named in the environment, if any, and reports
// whether it did (main then exits).
func floorRole() bool {
	var err error
	switch os.Getenv(floorRoleEnv) {
	case "server":
		err = floorServer(os.Getenv(floorSockEnv))
	case "client":
		err = floorClient()
	default:
		return false
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
	return true
}

// echoFS answers Stat with an entry of the size envd-fs answers, without
// touching the filesystem.
type echoFS struct {
	fspb.UnimplementedFilesystemServer
	ts *timestamppb.Timestamp
}

func (e *echoFS) Stat(_ context.Context, req *fspb.StatRequest) (*fspb.StatResponse, error) {
	return &fspb.StatResponse{Entry: &fspb.EntryInfo{
		Name: filepath.Base(req.GetPath()), Type: fspb.FileType_FILE_TYPE_FILE, Path: req.GetPath(),
		Size: 4096, Mode: 0o644, Permissions: "-rw-r--r--", Owner: "root", Group: "root", ModifiedTime: e.ts,
	}}, nil
}

func floorServer(sock string) error {
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	s := grpc.NewServer(contract.ServerOptions()...)
	fspb.RegisterFilesystemServer(s, &echoFS{ts: timestamppb.Now()})
	fmt.Println("ready")
	// The parent ends us by closing our stdin.
	go func() {
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		s.Stop()
	}()
	return s.Serve(ln)
}

func floorClient() error {
	sock, n := os.Getenv(floorSockEnv), 0
	n, _ = strconv.Atoi(os.Getenv(floorNEnv))
	serverPid, _ := strconv.Atoi(os.Getenv(floorPidEnv))
	opts := append(contract.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	conn, err := grpc.NewClient("unix:"+sock, opts...)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	cl := fspb.NewFilesystemClient(conn)
	ctx := context.Background()
	req := &fspb.StatRequest{Path: "/var/tmp/envd-compare-x/small"}
	call := func() error {
		_, err := cl.Stat(ctx, req)
		return err
	}
	for range max(n/5, 20) { // warm-up: connection, window, pools
		if err := call(); err != nil {
			return err
		}
	}
	lat := make([]time.Duration, 0, n)
	c0, s0 := pidCPUNs(os.Getpid()), pidCPUNs(serverPid)
	for range n {
		t0 := time.Now()
		if err := call(); err != nil {
			return err
		}
		lat = append(lat, time.Since(t0))
	}
	c1, s1 := pidCPUNs(os.Getpid()), pidCPUNs(serverPid)
	return json.NewEncoder(os.Stdout).Encode(floorResult{
		P50Ns: int64(median(lat)), P90Ns: int64(percentile(lat, 0.9)),
		ClientCPUNs: c1 - c0, ServerCPUNs: s1 - s0, Calls: n,
	})
}

// pidCPUNs is the CPU time of every thread of pid so far, in ns.
func pidCPUNs(pid int) int64 {
	s := side{pids: []int{pid}}
	return s.cpuNs()
}

// runFloor starts the two roles and returns the client's report.
func runFloor(calls int) (*floorResult, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "envd-floor-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s")
	env := append(os.Environ(), "GOMAXPROCS=1", floorSockEnv+"="+sock)
	srv := exec.Command(self)
	srv.Env = append(env, floorRoleEnv+"=server")
	srv.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	srv.Stderr = os.Stderr
	stdin, err := srv.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := srv.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := srv.Start(); err != nil {
		return nil, err
	}
	defer func() { _ = stdin.Close(); _ = srv.Wait() }()
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || strings.TrimSpace(line) != "ready" {
		return nil, fmt.Errorf("floor server did not come up: %q %v", line, err)
	}
	cl := exec.Command(self)
	cl.Env = append(env, floorRoleEnv+"=client", floorNEnv+"="+strconv.Itoa(calls), floorPidEnv+"="+strconv.Itoa(srv.Process.Pid))
	cl.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cl.Stderr = os.Stderr
	b, err := cl.Output()
	if err != nil {
		return nil, fmt.Errorf("floor client: %w", err)
	}
	var r floorResult
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("floor client said %q: %w", b, err)
	}
	return &r, nil
}

// benchFloor puts the floor beside a Stat through the tree and on the
// standalone envd-fs, alternating rounds as bench-compare does.
func benchFloor() error {
	calls, rounds := 1000, 3
	if short {
		calls, rounds = 50, 1
	}
	f, err := newFixture(0)
	if err != nil {
		return err
	}
	defer os.RemoveAll(f.dir)
	bundle, err := envdtest.Bundle()
	if err != nil {
		return err
	}
	tree, err := startBinary("tree", filepath.Join(bundle, "envd-init"), true)
	if err != nil {
		return err
	}
	defer tree.stop()
	alone, err := startStandalone()
	if err != nil {
		return err
	}
	defer alone.stop()
	sides := []*side{tree, alone}
	stat := []op{{"Stat", calls / rounds, func(ctx context.Context, s *side, _ int) error { return s.opStat(ctx, f.small) }}}
	if _, err := runMix(sides, stat, 1); err != nil { // warm-up
		return err
	}
	var floors []*floorResult
	var res map[*side]map[string]*result
	for r := range rounds {
		fl, err := runFloor(calls / rounds)
		if err != nil {
			return err
		}
		floors = append(floors, fl)
		rr, err := runMix(sides, stat, 1)
		if err != nil {
			return err
		}
		if r == 0 {
			res = rr
			continue
		}
		for _, s := range sides {
			res[s]["Stat"].lat = append(res[s]["Stat"].lat, rr[s]["Stat"].lat...)
			res[s]["Stat"].cpuNs += rr[s]["Stat"].cpuNs
			res[s]["Stat"].calls += rr[s]["Stat"].calls
		}
	}
	var p50s []time.Duration
	var cCPU, sCPU int64
	n := 0
	for _, fl := range floors {
		p50s = append(p50s, time.Duration(fl.P50Ns))
		cCPU += fl.ClientCPUNs
		sCPU += fl.ServerCPUNs
		n += fl.Calls
	}
	perCall := func(ns int64, calls int) time.Duration { return time.Duration(ns / int64(max(calls, 1))) }
	tr, st := res[tree]["Stat"], res[alone]["Stat"]
	treeCPU, aloneCPU := perCall(tr.cpuNs, tr.calls), perCall(st.cpuNs, st.calls)
	floorCPU := perCall(cCPU+sCPU, n)
	add("hop floor: gRPC unary p50 (median of rounds)", dur(median(p50s)), "", nil)
	add("hop floor: CPU/call client (envd-init's role)", dur(perCall(cCPU, n)), "", nil)
	add("hop floor: CPU/call server (plugin's role)", dur(perCall(sCPU, n)), "", nil)
	add("hop floor: CPU/call both", dur(floorCPU), "", nil)
	add("Stat p50 tree / standalone", dur(median(tr.lat))+" / "+dur(median(st.lat)), "", nil)
	add("Stat CPU/call tree / standalone", dur(treeCPU)+" / "+dur(aloneCPU), "", nil)
	add("Stat CPU the tree adds / floor", fmt.Sprintf("%s / %s (%.2fx)", dur(treeCPU-aloneCPU), dur(floorCPU),
		float64(treeCPU-aloneCPU)/float64(max(floorCPU, 1))), "", nil)
	return nil
}
