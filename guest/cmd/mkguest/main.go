// Command mkguest packs the guest initramfs: the boxctl-agent binary as /init plus the kernel
// modules it needs (with their dependencies, uncompressed, and a matching modules.dep).
// guest/build.sh drives it; see guest/README.md.
//
//	mkguest -agent build/guest/boxctl-agent -modules /lib/modules/6.1.0-56-cloud-amd64 -o build/guest/initramfs
//
// The output is deterministic; when it equals the existing file, the file is left untouched
// (so its mtime tells whether anything changed).
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/boxctl/boxctl/guest/internal/initramfs"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "mkguest:", err)
		os.Exit(1)
	}
}

func run() error {
	var opts initramfs.Options
	var out, modules string
	flag.StringVar(&opts.Agent, "agent", "", "path of the static boxctl-agent binary (required)")
	flag.StringVar(&opts.ModulesDir, "modules", "", "kernel modules tree, /lib/modules/<release> (empty: no modules)")
	flag.StringVar(&opts.Release, "release", "", "kernel release (default: base name of -modules)")
	flag.StringVar(&opts.Compression, "compress", "none", "initramfs compression: none, gzip or zstd")
	flag.BoolVar(&opts.StripSignatures, "strip-signatures", false, "strip module signatures (faster module loading under emulation; taints the kernel)")
	flag.StringVar(&modules, "want", strings.Join(initramfs.DefaultModules, ","), "comma-separated module names to include")
	flag.StringVar(&out, "o", "", "output file (required)")
	flag.Parse()
	if opts.Agent == "" || out == "" {
		flag.Usage()
		return fmt.Errorf("-agent and -o are required")
	}
	opts.Modules = strings.Split(modules, ",")

	var buf bytes.Buffer
	sel, err := initramfs.Build(&buf, opts)
	if err != nil {
		return err
	}
	names := make([]string, len(sel.Modules))
	for i, m := range sel.Modules {
		names[i] = m.Name
	}
	fmt.Fprintf(os.Stderr, "mkguest: %d modules (%s); built in: %s\n", len(names), strings.Join(names, " "), strings.Join(sel.Builtin, " "))
	if len(sel.Missing) > 0 {
		fmt.Fprintf(os.Stderr, "mkguest: warning: modules neither built in nor found: %s\n", strings.Join(sel.Missing, " "))
	}

	if old, err := os.ReadFile(out); err == nil && bytes.Equal(old, buf.Bytes()) {
		fmt.Fprintf(os.Stderr, "mkguest: %s is up to date (%d bytes)\n", out, len(old))
		return nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), ".initramfs-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(buf.Bytes()); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "mkguest: wrote %s (%d bytes)\n", out, buf.Len())
	return nil
}
