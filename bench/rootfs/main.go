// Command rootfs benchmarks the registry-oci image source: pull throughput
// from a loopback registry, reference-to-root-disk time, and the
// conventional extract + mkfs.ext4 -d pipeline on the same layers.
//
//	go run ./bench/rootfs [-size MB] [-files N] [-layers N] [-compression gzip|zstd|none] [-dir DIR] [-runs N] [-keep]
//
// The benchmark body lives in plugins/registry-oci/internal/rootfsbench,
// because it drives the plugin's internal packages, which Go only lets code
// under plugins/registry-oci import; this launcher runs it from the module
// root with the same flags.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

func main() {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(gomod)) == "" || strings.TrimSpace(string(gomod)) == os.DevNull {
		fmt.Fprintln(os.Stderr, "bench/rootfs: run me from inside the boxctl module (go run ./bench/rootfs)")
		os.Exit(1)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	cmd := exec.Command("go", append([]string{"run", "./plugins/registry-oci/internal/rootfsbench"}, os.Args[1:]...)...)
	cmd.Dir = root
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			os.Exit(exit.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "bench/rootfs:", err)
		os.Exit(1)
	}
}
