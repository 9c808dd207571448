// Scratch ListDir breakdown (not part of the project; removed after use).
package main

import (
	"bytes"
	"context"
	"fmt"
	"google.golang.org/protobuf/proto"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"time"

	"connectrpc.com/connect"
	fspb "github.com/envd-project/envd/gen/filesystem"
	"github.com/envd-project/envd/gen/filesystem/filesystemconnect"
	"github.com/envd-project/envd/test/envdtest"
	"os/exec"
	"strconv"
	"syscall"
)

func standalone() (string, func(), error) {
	dir, _ := envdtest.Bundle()
	port, _ := envdtest.FreePort()
	cmd := exec.Command(filepath.Join(dir, "envd-fs"), "--standalone", "--port", strconv.Itoa(port), "--no-cgroups")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	for i := 0; i < 500; i++ {
		if res, err := http.Post(url+"/filesystem.Filesystem/Stat", "application/json", nil); err == nil {
			res.Body.Close()
			return url, stop, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return "", nil, fmt.Errorf("no standalone")
}

func main() {
	e, err := envdtest.StartE()
	if err != nil {
		panic(err)
	}
	defer e.Stop()
	std, stop, err := standalone()
	if err != nil {
		panic(err)
	}
	defer stop()
	dir, _ := os.MkdirTemp("/var/tmp", "envd-ldb-")
	defer os.RemoveAll(dir)
	for i := 0; i < 10000; i++ {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%05d", i)), nil, 0o644)
	}
	n := 15
	if len(os.Args) > 1 {
		n, _ = strconv.Atoi(os.Args[1])
	}
	type cfg struct {
		name string
		url  string
		opts []connect.ClientOption
	}
	nogz := connect.WithAcceptCompression("gzip", nil, nil)
	cfgs := []cfg{
		{"init json", e.URL, []connect.ClientOption{connect.WithProtoJSON()}},
		{"init json nogzip", e.URL, []connect.ClientOption{connect.WithProtoJSON(), nogz}},
		{"init proto", e.URL, nil},
		{"init proto nogzip", e.URL, []connect.ClientOption{nogz}},
		{"std json", std, []connect.ClientOption{connect.WithProtoJSON()}},
		{"std json nogzip", std, []connect.ClientOption{connect.WithProtoJSON(), nogz}},
		{"std proto nogzip", std, []connect.ClientOption{nogz}},
	}
	res := map[string][]time.Duration{}
	for r := 0; r < n; r++ {
		for _, c := range cfgs {
			cl := filesystemconnect.NewFilesystemClient(http.DefaultClient, c.url, c.opts...)
			t0 := time.Now()
			out, err := cl.ListDir(context.Background(), connect.NewRequest(&fspb.ListDirRequest{Path: dir, Depth: 1}))
			if err != nil {
				panic(err)
			}
			if len(out.Msg.Entries) != 10000 {
				panic("count")
			}
			res[c.name] = append(res[c.name], time.Since(t0))
		}
	}
	raw := []struct{ name, url, ct string }{
		{"RAW init json", e.URL, "application/json"},
		{"RAW init proto", e.URL, "application/proto"},
		{"RAW std json", std, "application/json"},
		{"RAW std proto", std, "application/proto"},
	}
	for r := 0; r < n; r++ {
		for _, c := range raw {
			var body []byte
			if c.ct == "application/json" {
				body = []byte(fmt.Sprintf(`{"path":%q,"depth":1}`, dir))
			} else {
				body, _ = proto.Marshal(&fspb.ListDirRequest{Path: dir, Depth: 1})
			}
			t0 := time.Now()
			resp, err := http.Post(c.url+"/filesystem.Filesystem/ListDir", c.ct, bytes.NewReader(body))
			if err != nil {
				panic(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || len(b) < 100000 {
				panic(string(b))
			}
			res[c.name] = append(res[c.name], time.Since(t0))
		}
	}
	for _, c := range raw {
		cfgs = append(cfgs, cfg{name: c.name})
	}
	for _, c := range cfgs {
		d := res[c.name]
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		fmt.Printf("%-20s p50 %6.1fms min %6.1fms\n", c.name, float64(d[len(d)/2].Microseconds())/1000, float64(d[0].Microseconds())/1000)
	}
}
