// Command envd-init is the bundle's one executable, and so it runs in every
// process of the tree: started under its own name it is envd-init (PID 1:
// listener, auth, supervision, reaper); hard-linked as envd-proc, envd-fs or
// envd-net it is that plugin. One file under four names lets the kernel share
// its pages between the four processes (docs/architecture.md).
package main

import (
	"os"
	"path/filepath"

	"github.com/envd-project/envd/envdinit/app"
	fsplugin "github.com/envd-project/envd/plugins/filesystem/plugin"
	"github.com/envd-project/envd/plugins/pluginkit/contract"
	"github.com/envd-project/envd/plugins/pluginkit/pluginmain"
	netplugin "github.com/envd-project/envd/plugins/ports/plugin"
	procplugin "github.com/envd-project/envd/plugins/process/plugin"
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
