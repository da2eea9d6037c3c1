// Command volumes prints the sequential read and write throughput of a
// 256 MiB file, measured in a real VM with dd, on each place a box can keep
// data: a virtio-fs host directory share (the qemu plugin's
// share_transport = "virtio-fs"; skipped without virtiofsd), a virtio-9p
// share, a named volume and the box's own disk. 9p needs a guest kernel
// with 9p: Debian's cloud kernel (build/guest) has none, so the 9p share is
// measured with -guest9p (default build/guest-generic, made by
// `KERNEL_PKG=linux-image-amd64 OUT=build/guest-generic guest/build.sh`)
// and skipped when that guest is missing.
//
//	go run ./bench/volumes -bin bin -guest build/guest
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/boxctl/boxctl/bench/internal/benchhome"
)

const sizeMiB = 256

func main() {
	bin := flag.String("bin", "bin", "directory with boxctl and its plugins")
	guest := flag.String("guest", "build/guest", "guest kernel and initramfs")
	guest9p := flag.String("guest9p", "build/guest-generic", "a guest whose kernel has 9p, for the share")
	rounds := flag.Int("rounds", 2, "measurements of each, the best printed")
	flag.Parse()
	fmt.Printf("sequential throughput of a %d MiB file (dd, 1 MiB blocks, timed from the host less an exec's own cost; write ends with fsync; read after dropping the guest's page cache), best of %d\n", sizeMiB, *rounds)
	fmt.Printf("%-28s %12s %12s\n", "WHERE", "WRITE MB/s", "READ MB/s")
	if err := measureDisks(*bin, *guest, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "volumes:", err)
		os.Exit(1)
	}
	if _, err := os.Stat(filepath.Join(*guest9p, "initramfs")); err != nil {
		fmt.Printf("%-28s %12s %12s\n", "9p share", "-", "-")
		fmt.Printf("  (no guest with 9p in %s: build it as the doc comment says)\n", *guest9p)
	} else if err := measureShare(*bin, *guest9p, "9p", *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "volumes:", err)
		os.Exit(1)
	}
	if err := measureShare(*bin, *guest, "virtio-fs", *rounds); err != nil {
		if !strings.Contains(err.Error(), "no virtiofsd") {
			fmt.Fprintln(os.Stderr, "volumes:", err)
			os.Exit(1)
		}
		fmt.Printf("%-28s %12s %12s\n", "virtio-fs share", "-", "-")
		fmt.Println("  (no virtiofsd on this host)")
	}
}

func measureDisks(bin, guest string, rounds int) error {
	h, err := benchhome.New(bin, guest, "bench-volumes-")
	if err != nil {
		return err
	}
	defer h.Close()
	if _, err := h.CLI("volume", "create", "--size", "1GiB", "bench"); err != nil {
		return err
	}
	if _, err := h.CLI("run", "-d", "--name", "b", "--disk-size", "2GiB", "-v", "bench:/vol", h.Image); err != nil {
		return err
	}
	defer func() { _, _ = h.CLI("rm", "-f", "b") }()
	if err := report(h, "named volume", "/vol/f", rounds); err != nil {
		return err
	}
	return report(h, "box's own disk", "/root-f", rounds)
}

// measureShare measures a host directory share over transport (the qemu
// plugin's share_transport).
func measureShare(bin, guest, transport string, rounds int) error {
	h, err := benchhome.New(bin, guest, "bench-volumes-"+transport+"-")
	if err != nil {
		return err
	}
	defer h.Close()
	// benchhome points XDG_CONFIG_HOME at h.Dir.
	if err := os.MkdirAll(filepath.Join(h.Dir, "boxctl"), 0o755); err != nil {
		return err
	}
	cfg := fmt.Sprintf("plugin \"qemu\" {\n  config {\n    share_transport = %q\n  }\n}\n", transport)
	if err := os.WriteFile(filepath.Join(h.Dir, "boxctl", "config.hcl"), []byte(cfg), 0o644); err != nil {
		return err
	}
	share := filepath.Join(h.Dir, "share")
	// A root boxctl serves the share as an unprivileged user (QEMU, or
	// virtiofsd in a user namespace), which opens it itself.
	for _, d := range []string{h.Dir, share} {
		if err := os.MkdirAll(d, 0o777); err != nil {
			return err
		}
		if err := os.Chmod(d, 0o777); err != nil {
			return err
		}
	}
	if _, err := h.CLI("run", "-d", "--name", "s", "-v", share+":/share", h.Image); err != nil {
		return err
	}
	defer func() { _, _ = h.CLI("rm", "-f", "s") }()
	return report(h, transport+" share (host dir)", "/share/f", rounds)
}

func report(h *benchhome.Home, what, file string, rounds int) error {
	var bestW, bestR float64
	for i := 0; i < rounds; i++ {
		w, r, err := measure(h, file)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		bestW, bestR = max(bestW, w), max(bestR, r)
	}
	fmt.Printf("%-28s %12.1f %12.1f\n", what, bestW, bestR)
	return nil
}

// measure times, from the host, one exec that writes the file (and fsyncs
// it) and one that reads it back after the guest's page cache is dropped,
// less the time of an exec of true (the exec's own cost): busybox's dd
// prints no rates.
func measure(h *benchhome.Home, file string) (write, read float64, err error) {
	box := "b"
	if strings.HasPrefix(file, "/share") {
		box = "s"
	}
	timed := func(script string) (time.Duration, error) {
		start := time.Now()
		_, err := h.CLI("exec", box, "--", "sh", "-c", script)
		return time.Since(start), err
	}
	base, err := timed("true")
	if err != nil {
		return 0, 0, err
	}
	w, err := timed(fmt.Sprintf("rm -f %[1]s; dd if=/dev/zero of=%[1]s bs=1M count=%[2]d conv=fsync 2>/dev/null", file, sizeMiB))
	if err != nil {
		return 0, 0, err
	}
	if _, err := timed("sync; echo 3 > /proc/sys/vm/drop_caches"); err != nil {
		return 0, 0, err
	}
	r, err := timed(fmt.Sprintf("dd if=%s of=/dev/null bs=1M 2>/dev/null", file))
	if err != nil {
		return 0, 0, err
	}
	if _, err := timed("rm -f " + file); err != nil {
		return 0, 0, err
	}
	rate := func(d time.Duration) float64 {
		d -= base
		if d <= 0 {
			return 0
		}
		return float64(sizeMiB) * (1 << 20) / d.Seconds() / 1e6
	}
	return rate(w), rate(r), nil
}
