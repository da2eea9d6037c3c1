// Command commit measures `boxctl commit` on a real VM and prints the
// numbers: the commit of a running box with a 100 MiB change (incompressible
// data, the worst case for the layer's gzip) against an unchanged box (the
// fixed cost), with the time the guest was frozen (while its changes
// streamed to the host) and the layer's size; and the commit of the same box
// stopped (which boots it for the diff).
//
// Run it with `make bench`, or after `make build guest`:
//
//	go run ./bench/commit -bin bin -guest build/guest
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"time"

	"github.com/boxctl/boxctl/bench/internal/benchhome"
	"github.com/boxctl/boxctl/config"
)

func main() {
	bin := flag.String("bin", "bin", "directory with boxctl and its plugins")
	guest := flag.String("guest", "build/guest", "directory with vmlinuz and initramfs")
	runs := flag.Int("runs", 3, "commits measured per case")
	mib := flag.Int("mib", 100, "size of the change in MiB")
	flag.Parse()
	if err := run(*bin, *guest, *runs, *mib); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type sample struct {
	wall, frozen time.Duration
	bytes        int64
}

var logLine = regexp.MustCompile(`box changes read for a commit: .*bytes=(\d+) frozen=(\S+)`)

func run(binDir, guestDir string, runs, mib int) error {
	binDir, _ = filepath.Abs(binDir)
	guestDir, _ = filepath.Abs(guestDir)
	h, err := benchhome.New(binDir, guestDir, "bxcommit")
	if err != nil {
		return err
	}
	defer h.Close()
	home, image := h.Home, h.Image
	cli := h.CLI
	defer cli("rm", "-f", "-a")
	commit := func(tag string) (sample, error) {
		start := time.Now()
		out, err := cli("--log-level", "info", "commit", "bench", "bench/commit:"+tag)
		s := sample{wall: time.Since(start)}
		if err != nil {
			return s, err
		}
		if m := logLine.FindStringSubmatch(out); m != nil {
			s.bytes, _ = strconv.ParseInt(m[1], 10, 64)
			s.frozen, _ = time.ParseDuration(m[2])
		}
		return s, nil
	}
	series := func(name string) ([]sample, error) {
		var out []sample
		for i := range runs {
			s, err := commit(fmt.Sprintf("%s-%d", name, i))
			if err != nil {
				return nil, err
			}
			out = append(out, s)
		}
		return out, nil
	}

	fmt.Println("== boxctl commit (QEMU; accel as the qemu plugin chooses) ==")
	if _, err := cli("run", "-d", "--name", "bench", image); err != nil {
		return err
	}
	empty, err := series("empty")
	if err != nil {
		return err
	}
	if _, err := cli("exec", "bench", "--", "sh", "-c", fmt.Sprintf("dd if=/dev/urandom of=/root/change bs=1M count=%d 2>/dev/null", mib)); err != nil {
		return err
	}
	full, err := series("change")
	if err != nil {
		return err
	}
	if _, err := cli("stop", "bench"); err != nil {
		return err
	}
	stopped, err := commit("stopped")
	if err != nil {
		return err
	}
	report := func(what string, ss []sample) {
		m := median(ss)
		fmt.Printf("%-44s %8s  (min %s; guest frozen %s; diff %s)\n", what, m.wall.Round(time.Millisecond),
			minWall(ss).Round(time.Millisecond), m.frozen.Round(time.Millisecond), config.HumanSize(uint64(m.bytes)))
	}
	report("commit of a running box, no change", empty)
	report(fmt.Sprintf("commit of a running box, %d MiB change", mib), full)
	report("commit of that box stopped (boots it)", []sample{stopped})
	layers, _ := filepath.Glob(filepath.Join(home, "plugins-data", "oci", "blobs", "sha256", "*"))
	var biggest int64
	for _, l := range layers {
		if fi, err := os.Stat(l); err == nil && fi.Size() > biggest {
			biggest = fi.Size()
		}
	}
	fmt.Printf("%-44s %8s\n", "largest blob in the cache (the gzip layer)", config.HumanSize(uint64(biggest)))
	return nil
}

func median(ss []sample) sample {
	c := append([]sample(nil), ss...)
	sort.Slice(c, func(i, j int) bool { return c[i].wall < c[j].wall })
	return c[len(c)/2]
}

func minWall(ss []sample) time.Duration {
	m := ss[0].wall
	for _, s := range ss {
		m = min(m, s.wall)
	}
	return m
}
