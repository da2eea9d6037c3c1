// Command boxctl-plugin-libkrun is boxctl's libkrun VMM plugin. Run by
// boxctl as a go-plugin process it serves the VMM role; run as
// `boxctl-plugin-libkrun launch FILE` (by a box monitor, from a launch
// plan) it becomes one VM: libkrun takes the process over and exits it
// with the guest's code.
package main

import (
	"os"
	"path/filepath"

	"github.com/boxctl/boxctl/plugins/libkrun/internal/krunvmm"
	"github.com/boxctl/boxctl/sdk"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "launch" {
		os.Exit(krunvmm.Launch(os.Args[2], os.Stderr))
	}
	exe, err := os.Executable()
	if err == nil {
		exe, _ = filepath.EvalSymlinks(exe)
	}
	logger := sdk.NewLogger("libkrun")
	sdk.Serve(sdk.ServeConfig{VMM: krunvmm.New(logger, exe), Logger: logger})
}
