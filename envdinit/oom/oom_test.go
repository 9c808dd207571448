package oom

import (
	"errors"
	"io/fs"
	"os/exec"
	"testing"
)

func startSleep(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}

func TestUserProcessChild(t *testing.T) {
	// Raising the score needs no privilege.
	cmd := startSleep(t)
	pid := cmd.Process.Pid
	if err := SetScoreAdj(pid, UserProcess); err != nil {
		t.Fatal(err)
	}
	if v, err := ScoreAdj(pid); err != nil || v != UserProcess {
		t.Fatalf("ScoreAdj = %d, %v", v, err)
	}
}

func TestProtectChild(t *testing.T) {
	cmd := startSleep(t)
	pid := cmd.Process.Pid
	if err := Protect(pid); err != nil {
		if errors.Is(err, fs.ErrPermission) {
			t.Skipf("lowering oom_score_adj needs CAP_SYS_RESOURCE, which this process lacks: %v", err)
		}
		t.Fatal(err)
	}
	if v, err := ScoreAdj(pid); err != nil || v != Unkillable {
		t.Fatalf("ScoreAdj = %d, %v", v, err)
	}
}

func TestErrors(t *testing.T) {
	if err := SetScoreAdj(0, 1001); err == nil {
		t.Fatal("want range error")
	}
	if _, err := ScoreAdj(1 << 30); err == nil {
		t.Fatal("want error for missing pid")
	}
	if v, err := ScoreAdj(0); err != nil || v < -1000 || v > 1000 {
		t.Fatalf("self = %d, %v", v, err)
	}
}
