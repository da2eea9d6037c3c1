// Command vmlinux writes the uncompressed ELF kernel inside an x86 bzImage, after checking
// that it has a PVH entry point: guest/build.sh makes build/guest/vmlinux with it, which the
// qemu plugin boots in preference to the bzImage (no in-guest decompression).
//
//	vmlinux -o build/guest/vmlinux build/guest/vmlinuz
//
// Exit status 2 means the kernel cannot be booted through PVH (no PVH note, or a compression
// this does not read); the output is then left as it was.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/boxctl/boxctl/guest/internal/bzimage"
)

func main() {
	out := flag.String("o", "", "output file (written atomically)")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: vmlinux -o OUT BZIMAGE")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *out == "" || flag.NArg() != 1 {
		flag.Usage()
		os.Exit(1)
	}
	if err := run(flag.Arg(0), *out); err != nil {
		fmt.Fprintln(os.Stderr, "vmlinux:", err)
		if errors.Is(err, bzimage.ErrNoPVH) || errors.Is(err, bzimage.ErrUnsupportedCodec) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

func run(in, out string) error {
	b, err := os.ReadFile(in)
	if err != nil {
		return err
	}
	k, err := bzimage.Extract(b)
	if err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	// Unchanged content keeps its mtime, as the rest of guest/build.sh does.
	if old, err := os.ReadFile(out); err == nil && string(old) == string(k) {
		return nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), ".vmlinux-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(k); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "vmlinux: updated", out)
	return nil
}
