// Command envd-net is the envd-net plugin built on its own; it runs in
// envd-net. make swap-envd-net swaps it into a running bundle (hot-swap),
// and envd-net --standalone --port N runs the port forwarding alone for
// debugging. The bundle itself ships cmd/envd-init
// under this name (docs/development.md).
package main

import (
	"os"

	"github.com/envd-project/envd/plugins/pluginkit/pluginmain"
	netplugin "github.com/envd-project/envd/plugins/ports/plugin"
)

func main() {
	os.Exit(pluginmain.Main(netplugin.Spec, os.Args[1:]))
}
