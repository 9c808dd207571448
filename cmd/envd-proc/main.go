// Command envd-proc is the envd-proc plugin built on its own; it runs in
// envd-proc. make swap-envd-proc swaps it into a running bundle (hot-swap),
// and envd-proc --standalone --port N serves process.Process alone for
// debugging. The bundle itself ships cmd/envd-init
// under this name (docs/development.md).
package main

import (
	"os"

	"github.com/envd-project/envd/plugins/pluginkit/pluginmain"
	procplugin "github.com/envd-project/envd/plugins/process/plugin"
)

func main() {
	os.Exit(pluginmain.Main(procplugin.Spec, os.Args[1:]))
}
