package supervisor

import (
	"context"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/envd-project/envd/envdinit/reaper"
	"go.uber.org/zap"
)

// A cgroup the kernel will not spawn into (here: an fd that is no cgroup
// directory, as a kernel without CLONE_INTO_CGROUP refuses any) costs the
// plugin its placement, not its start.
func TestRunnerStartsOutsideARefusedCgroup(t *testing.T) {
	if err := reaper.MakeSubreaper(); err != nil {
		t.Fatal(err)
	}
	rp := reaper.New(zap.NewNop())
	defer rp.Close()
	notACgroup, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer notACgroup.Close()
	cmd := exec.Command("/bin/sh", "-c", "echo up")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, UseCgroupFD: true, CgroupFD: int(notACgroup.Fd())}
	r, err := newReapedRunner(rp, cmd)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatalf("start: %v", err)
	}
	if r.cgroupRefused == nil {
		t.Fatal("the refusal was not recorded")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Wait(ctx); err != nil {
		t.Fatalf("plugin stand-in: %v", err)
	}
}
