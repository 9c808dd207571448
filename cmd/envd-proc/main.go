// Command envd-proc is the proc plugin built alone, for hot-swapping it into a
// running bundle during development or running it with --standalone. The
// bundle itself ships envd-init under this name (see cmd/envd-init).
package main

import (
	"os"

	"github.com/envd-project/envd/plugins/pluginkit/pluginmain"
	procplugin "github.com/envd-project/envd/plugins/process/plugin"
)

func main() {
	os.Exit(pluginmain.Main(procplugin.Spec, os.Args[1:]))
}
