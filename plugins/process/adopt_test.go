package process

import (
	"os/exec"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// An exit that envd-init reaped (or that was read with WNOWAIT) is told the
// way os/exec tells one this envd-proc reaped: the same end event fields.
func TestWaitStateMatchesProcessState(t *testing.T) {
	for _, script := range []string{"exit 0", "exit 7", "kill -KILL $$", "kill -TERM $$", "ulimit -c 0; kill -SEGV $$"} {
		cmd := exec.Command("/bin/sh", "-c", script)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// What the lifecycle reads before the reap.
		var info unix.Siginfo
		if err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
			t.Fatal(err)
		}
		peeked := waitState(statusFromSiginfo(&info))
		werr := cmd.Wait()
		st := cmd.ProcessState
		reaped := waitState(st.Sys().(syscall.WaitStatus))
		for name, got := range map[string]waitState{"peeked": peeked, "reaped": reaped} {
			if got.String() != st.String() || got.ExitCode() != st.ExitCode() || got.Exited() != st.Exited() {
				t.Errorf("%q %s: %q/%d/%v, os/exec says %q/%d/%v", script, name, got.String(), got.ExitCode(), got.Exited(), st.String(), st.ExitCode(), st.Exited())
			}
			gotErr := got.waitErr()
			if (gotErr == nil) != (werr == nil) || (werr != nil && gotErr.Error() != werr.Error()) {
				t.Errorf("%q %s: wait error %v, os/exec says %v", script, name, gotErr, werr)
			}
		}
	}
}
