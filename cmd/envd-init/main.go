// Command envd-init is the root of the envd process tree. The bundle is one
// executable under four names (hard links): started as envd-proc, envd-fs
// or envd-net it is that plugin, so the kernel shares its pages between all
// four processes (shared/notes/PLUGIN_COSTS.md).
package main

import (
	"os"
	"path/filepath"

	"github.com/envd-project/envd/envdinit/app"
	"github.com/envd-project/envd/plugins/contract"
	"github.com/envd-project/envd/plugins/fsplugin"
	"github.com/envd-project/envd/plugins/netplugin"
	"github.com/envd-project/envd/plugins/pluginmain"
	"github.com/envd-project/envd/plugins/procplugin"
)

func main() {
	switch filepath.Base(os.Args[0]) {
	case contract.Proc:
		os.Exit(pluginmain.Main(procplugin.Spec, os.Args[1:]))
	case contract.FS:
		os.Exit(pluginmain.Main(fsplugin.Spec, os.Args[1:]))
	case contract.Net:
		os.Exit(pluginmain.Main(netplugin.Spec, os.Args[1:]))
	}
	os.Exit(app.Main(os.Args[1:]))
}
