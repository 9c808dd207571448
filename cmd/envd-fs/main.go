// Command envd-fs is the envd-fs plugin built on its own; it runs in
// envd-fs. make swap-envd-fs swaps it into a running bundle (hot-swap),
// and envd-fs --standalone --port N serves filesystem.Filesystem and /files
// alone for debugging. The bundle itself ships cmd/envd-init
// under this name (docs/development.md).
package main

import (
	"os"

	fsplugin "github.com/envd-project/envd/plugins/filesystem/plugin"
	"github.com/envd-project/envd/plugins/pluginkit/pluginmain"
)

func main() {
	os.Exit(pluginmain.Main(fsplugin.Spec, os.Args[1:]))
}
