// Package integration drives the real envd bundle (envd-init and its three
// plugins) through its public port with Connect-JSON, Connect-proto,
// gRPC-Web and gRPC clients. Test-only.
package integration

import (
	"fmt"
	"os"
	"testing"

	"github.com/envd-project/envd/test/envdtest"
)

func TestMain(m *testing.M) {
	if _, err := envdtest.Bundle(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := envdtest.EnsureUser(); err != nil {
		fmt.Fprintln(os.Stderr, "no sandbox user:", err)
	}
	os.Exit(m.Run())
}
