// Command snapshot measures snapshots and clones of running boxes on real
// VMs and prints the numbers: for a box with 64 MiB written and one with
// 2 GiB written, the time of `CreateSnapshot` and of a one-box `CloneBoxes`
// through the Go API (the whole quiesce bracket included), how long the
// guest's filesystem was frozen and its vCPUs paused, and the ratio of the
// large box's times to the small one's (targets: ratio at most 1.3, each
// under 300 ms).
//
//	go run ./bench/snapshot -bin bin -guest build/guest
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/boxctl/boxctl/bench/internal/benchhome"
	"github.com/boxctl/boxctl/bench/internal/stat"
	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core"
)

func main() {
	bin := flag.String("bin", "bin", "directory with boxctl and its plugins")
	guest := flag.String("guest", "build/guest", "directory with vmlinuz and initramfs")
	reps := flag.Int("reps", 5, "snapshots and clones measured per box")
	flag.Parse()
	if err := run(*bin, *guest, *reps); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type figures struct {
	snapshot, clone, frozen, paused []time.Duration
}

func run(binDir, guestDir string, reps int) error {
	ctx := context.Background()
	binDir, _ = filepath.Abs(binDir)
	guestDir, _ = filepath.Abs(guestDir)
	h, err := benchhome.New(binDir, guestDir, "bxsnap")
	if err != nil {
		return err
	}
	defer h.Close()
	boxctl, home, image := h.Boxctl, h.Home, h.Image
	cli := func(args ...string) error {
		_, err := h.CLI(args...)
		return err
	}
	defer cli("rm", "-a", "-f") //nolint:errcheck
	fmt.Println("== snapshots and clones of running boxes (QEMU, qcow2; accel as the qemu plugin chooses) ==")
	sizes := []struct {
		name string
		mib  int
	}{{"small", 64}, {"large", 2048}}
	for _, s := range sizes {
		if err := cli("run", "-d", "--name", s.name, "--disk-size", "4GiB", image); err != nil {
			return err
		}
		if err := cli("exec", s.name, "--", "sh", "-c", fmt.Sprintf("dd if=/dev/zero of=/fill bs=1M count=%d 2>/dev/null && sync", s.mib)); err != nil {
			return err
		}
	}
	cfg := config.Default()
	cfg.Home = home
	rt, err := core.Open(ctx, core.WithConfig(cfg), core.WithPluginDirs(binDir), core.WithMonitorBinary(boxctl), core.WithLogger(hclog.NewNullLogger(), nil))
	if err != nil {
		return err
	}
	defer rt.Close()
	results := map[string]*figures{}
	for _, s := range sizes {
		f := &figures{}
		results[s.name] = f
		for i := 0; i < reps; i++ {
			// A little new data each time, so that every snapshot and
			// clone freezes a written overlay and moves the VM off it.
			touch := func() error {
				_, err := rt.Exec(ctx, s.name, core.ExecOptions{Argv: []string{"sh", "-c", fmt.Sprintf("dd if=/dev/zero of=/t%d bs=1M count=1 2>/dev/null && sync", i)}})
				return err
			}
			if err := touch(); err != nil {
				return err
			}
			start := time.Now()
			sn, err := rt.CreateSnapshot(ctx, s.name, fmt.Sprintf("s%d", i))
			if err != nil {
				return err
			}
			f.snapshot = append(f.snapshot, time.Since(start))
			f.frozen = append(f.frozen, sn.Quiesced.Frozen)
			f.paused = append(f.paused, sn.Quiesced.Paused)
			if err := touch(); err != nil {
				return err
			}
			start = time.Now()
			clones, err := rt.CloneBoxes(ctx, s.name, core.CloneOptions{Name: fmt.Sprintf("%s-c%d", s.name, i)})
			if err != nil {
				return err
			}
			f.clone = append(f.clone, time.Since(start))
			if err := rt.Remove(ctx, clones[0].ID(), core.RemoveOptions{}); err != nil {
				return err
			}
		}
	}
	small, large := results["small"], results["large"]
	row := func(what string, a, b []time.Duration) {
		ma, mb := stat.Median(a), stat.Median(b)
		fmt.Printf("%-28s 64 MiB written: median %7s (min %7s)   2 GiB written: median %7s (min %7s)   ratio %.2fx\n",
			what, ms(ma), ms(stat.Min(a)), ms(mb), ms(stat.Min(b)), float64(mb)/float64(ma))
	}
	row("snapshot (Go API):", small.snapshot, large.snapshot)
	row("clone, 1 box (Go API):", small.clone, large.clone)
	row("  guest frozen (snapshot):", small.frozen, large.frozen)
	row("  vCPUs paused (snapshot):", small.paused, large.paused)
	fmt.Printf("targets: ratio <= 1.3x, each < 300ms; %d reps per box\n", reps)
	return nil
}

func ms(d time.Duration) string { return d.Round(100 * time.Microsecond).String() }
