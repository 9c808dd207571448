package supervisor

import (
	"os/exec"
	"testing"
	"time"
)

func TestProcessGone(t *testing.T) {
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	gone, unwatch, err := processGone(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer unwatch()
	select {
	case <-gone:
		t.Fatal("gone while the process runs")
	case <-time.After(50 * time.Millisecond):
	}
	// A second watch, ended early, releases without the process ending.
	gone2, unwatch2, err := processGone(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	unwatch2()
	select {
	case <-gone2:
	case <-time.After(10 * time.Second):
		t.Fatal("unwatch did not end the watch")
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	select {
	case <-gone:
	case <-time.After(10 * time.Second):
		t.Fatal("not gone 10 s after the process ended")
	}
	if _, _, err := processGone(cmd.Process.Pid); err == nil {
		t.Error("a watch of an ended process started")
	}
}
