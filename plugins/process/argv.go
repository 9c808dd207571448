package process

import "os/exec"

// WrapperArgv is the argument vector Start runs for cmd and args, so a
// benchmark can compare Start with a raw fork/exec of the same thing.
func WrapperArgv(cmd string, args []string) []string {
	return newWrapper(exec.LookPath).argv(cmd, args)
}
