// Command boxctl-plugin-qemu is boxctl's QEMU VMM plugin. Run by boxctl as
// a go-plugin process it serves the VMM role; run as
// `boxctl-plugin-qemu launch FILE` (by a box monitor, from a launch plan)
// it runs one VM (and an unprivileged one starts its virtiofsd through
// `boxctl-plugin-qemu virtiofsd-exec ...`).
package main

import (
	"os"
	"path/filepath"

	"github.com/boxctl/boxctl/plugins/qemu/internal/qemuvmm"
	"github.com/boxctl/boxctl/sdk"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "launch" {
		os.Exit(qemuvmm.Launch(os.Args[2], os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == "virtiofsd-exec" {
		os.Exit(qemuvmm.VirtiofsdExec(os.Args[2:], os.Stderr))
	}

	exe, err := os.Executable()
	if err == nil {
		exe, _ = filepath.EvalSymlinks(exe)
	}
	logger := sdk.NewLogger("qemu")
	sdk.Serve(sdk.ServeConfig{VMM: qemuvmm.New(logger, exe), Logger: logger})
}
