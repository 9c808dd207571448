// Package oom adjusts how the kernel's OOM killer ranks processes; it runs in
// envd-init. envd's own processes must survive memory pressure (a dead PID 1 is
// a kernel panic), user processes go first.
package oom

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

const (
	// Unkillable is what envd-init and its plugins get (systemd's
	// OOMScoreAdjust=-1000 in E2B's unit).
	Unkillable = -1000
	// UserProcess is what envd-proc's wrapper gives user commands.
	UserProcess = 100
)

func path(pid int) string {
	if pid == 0 {
		return "/proc/self/oom_score_adj"
	}
	return "/proc/" + strconv.Itoa(pid) + "/oom_score_adj"
}

// SetScoreAdj writes oom_score_adj of pid (0 = the calling process).
// Lowering it needs CAP_SYS_RESOURCE; children inherit the value.
func SetScoreAdj(pid, score int) error {
	if score < -1000 || score > 1000 {
		return fmt.Errorf("oom_score_adj %d out of range [-1000, 1000]", score)
	}
	if err := os.WriteFile(path(pid), []byte(strconv.Itoa(score)), 0); err != nil {
		return fmt.Errorf("set oom_score_adj of pid %d: %w", pid, err)
	}
	return nil
}

// ScoreAdj reads oom_score_adj of pid (0 = the calling process).
func ScoreAdj(pid int) (int, error) {
	b, err := os.ReadFile(path(pid))
	if err != nil {
		return 0, fmt.Errorf("read oom_score_adj of pid %d: %w", pid, err)
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("parse oom_score_adj of pid %d: %w", pid, err)
	}
	return v, nil
}

// Protect makes pid (0 = self) exempt from the OOM killer.
func Protect(pid int) error { return SetScoreAdj(pid, Unkillable) }
