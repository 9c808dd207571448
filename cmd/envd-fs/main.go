// Command envd-fs is the fs plugin built alone, for hot-swapping it into a
// running bundle during development or running it with --standalone. The
// bundle itself ships envd-init under this name (see cmd/envd-init).
package main

import (
	"os"

	"github.com/envd-project/envd/plugins/fsplugin"
	"github.com/envd-project/envd/plugins/pluginmain"
)

func main() {
	os.Exit(pluginmain.Main(fsplugin.Spec, os.Args[1:]))
}
