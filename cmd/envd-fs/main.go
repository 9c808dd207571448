// Command envd-fs is the fs plugin built alone, for hot-swapping it into a
// running bundle during development or running it with --standalone. The
// bundle itself ships envd-init under this name (see cmd/envd-init).
package main

import (
	"os"

	fsplugin "github.com/envd-project/envd/plugins/filesystem/plugin"
	"github.com/envd-project/envd/plugins/pluginkit/pluginmain"
)

func main() {
	os.Exit(pluginmain.Main(fsplugin.Spec, os.Args[1:]))
}
