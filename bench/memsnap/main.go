// Command memsnap measures memory snapshots on real VMs and prints the
// numbers, all in one run on one machine: `boxctl run --rm IMAGE -- true`
// started from a boot template against a cold boot (target: at most 0.2×
// cold) and against `podman run --rm --network none IMAGE true` on the
// same image (when podman is installed); `start` of a suspended box against
// a cold start of a stopped one; fork of a running box for N=1 and N=4;
// and checkpoint time and file size for a 512 MiB guest with 64 MiB and
// with 400 MiB of memory in use. Every figure is the whole boxctl command,
// as a user runs it.
//
//	go run ./bench/memsnap -bin bin -guest build/guest
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/boxctl/boxctl/bench/internal/benchhome"
	"github.com/boxctl/boxctl/bench/internal/stat"
)

func main() {
	bin := flag.String("bin", "bin", "directory with boxctl and its plugins")
	guest := flag.String("guest", "build/guest", "directory with the guest kernel and initramfs")
	reps := flag.Int("reps", 5, "runs per figure")
	flag.Parse()
	if err := run(*bin, *guest, *reps); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(binDir, guestDir string, reps int) error {
	h, err := benchhome.New(binDir, guestDir, "bxmem")
	if err != nil {
		return err
	}
	defer h.Close()
	defer h.CLI("rm", "-a", "-f") //nolint:errcheck
	timed := func(args ...string) (time.Duration, string, error) {
		start := time.Now()
		out, err := h.CLI(args...)
		return time.Since(start), out, err
	}
	series := func(n int, args ...string) ([]time.Duration, error) {
		var ds []time.Duration
		for i := 0; i < n; i++ {
			d, _, err := timed(args...)
			if err != nil {
				return nil, err
			}
			ds = append(ds, d)
		}
		return ds, nil
	}
	fmt.Println("== memory snapshots (QEMU, qcow2; accel as the qemu plugin chooses) ==")

	// The first run of the image makes its boot template.
	first, _, err := timed("run", "--rm", h.Image, "--", "true")
	if err != nil {
		return err
	}
	fmt.Printf("first run (cold boot + making the template): %s\n", ms(first))
	warm, err := series(reps, "run", "--rm", h.Image, "--", "true")
	if err != nil {
		return err
	}
	cold, err := series(reps, "run", "--rm", "--cold", h.Image, "--", "true")
	if err != nil {
		return err
	}
	row("run --rm IMAGE -- true, from the boot template:", warm)
	row("run --rm --cold IMAGE -- true:", cold)
	fmt.Printf("  template / cold: %.2fx (target <= 0.20x)\n", ratio(warm, cold))
	if podman, note, perr := podmanSeries(h, reps); perr != nil {
		fmt.Printf("podman run --rm --network none IMAGE true: not measured (%v)\n", perr)
	} else {
		row("podman run --rm --network none IMAGE true:", podman)
		fmt.Printf("  (podman with %s)\n", note)
		fmt.Printf("  template / podman: %.2fx (long-run goal <= 2x)\n", ratio(warm, podman))
	}

	// Suspend/start against a cold start of a stopped box.
	if _, err := h.CLI("run", "-d", "--name", "sus", h.Image); err != nil {
		return err
	}
	var resume, coldStart, suspend []time.Duration
	for i := 0; i < reps; i++ {
		d, _, err := timed("suspend", "sus")
		if err != nil {
			return err
		}
		suspend = append(suspend, d)
		if d, _, err = timed("start", "sus"); err != nil {
			return err
		}
		resume = append(resume, d)
		if _, err := h.CLI("stop", "-t", "0", "sus"); err != nil {
			return err
		}
		if d, _, err = timed("start", "sus"); err != nil {
			return err
		}
		coldStart = append(coldStart, d)
	}
	row("suspend BOX:", suspend)
	row("start BOX (suspended):", resume)
	row("start BOX (stopped, cold boot):", coldStart)
	fmt.Printf("  resume / cold start: %.2fx\n", ratio(resume, coldStart))

	// Fork N=1 and N=4.
	for _, n := range []int{1, 4} {
		var ds []time.Duration
		for i := 0; i < reps; i++ {
			name := fmt.Sprintf("f%d-%d", n, i)
			d, _, err := timed("fork", "sus", "--count", fmt.Sprint(n), "--name", name)
			if err != nil {
				return err
			}
			ds = append(ds, d)
			var names []string
			if n == 1 {
				names = []string{name}
			} else {
				for j := 1; j <= n; j++ {
					names = append(names, fmt.Sprintf("%s-%d", name, j))
				}
			}
			if _, err := h.CLI(append([]string{"rm", "-f"}, names...)...); err != nil {
				return err
			}
		}
		row(fmt.Sprintf("fork BOX --count %d:", n), ds)
	}

	// Checkpoint time and size with 64 MiB and 400 MiB of memory in use.
	for _, mib := range []int{64, 400} {
		name := fmt.Sprintf("mem%d", mib)
		if _, err := h.CLI("run", "-d", "--name", name, "--memory", "512MiB", h.Image); err != nil {
			return err
		}
		// Random bytes in a tmpfs: memory in use that does not compress
		// and is not zero pages.
		if _, err := h.CLI("exec", name, "--", "sh", "-c", fmt.Sprintf("mkdir -p /run/fill && mount -t tmpfs -o size=450m tmpfs /run/fill && dd if=/dev/urandom of=/run/fill/x bs=1M count=%d 2>/dev/null", mib)); err != nil {
			return err
		}
		var ds []time.Duration
		var size string
		for i := 0; i < reps; i++ {
			d, out, err := timed("checkpoint", name, fmt.Sprintf("c%d", i))
			if err != nil {
				return err
			}
			ds = append(ds, d)
			size = savedSize(out)
		}
		row(fmt.Sprintf("checkpoint, 512 MiB guest, %d MiB in use:", mib), ds)
		fmt.Printf("  state file: %s\n", size)
	}
	return nil
}

// savedSize picks the size from checkpoint's "memory X saved" line.
func savedSize(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "memory ") {
			return strings.TrimSuffix(strings.Fields(l)[1], ",")
		}
	}
	return "?"
}

// podmanSeries times podman on the same image, loaded from the layout. It
// tries Debian's default runtime (crun) as the figure was taken;
// where crun cannot run (it refuses a hybrid cgroup host, and this sandbox
// forbids raising rlimits) it uses runc with the host's limits. The
// returned note says which.
func podmanSeries(h *benchhome.Home, reps int) ([]time.Duration, string, error) {
	podman, err := exec.LookPath("podman")
	if err != nil {
		return nil, "", fmt.Errorf("podman is not installed (apt-get install podman runc)")
	}
	layout := strings.TrimPrefix(h.Image, "oci-layout:")
	base := []string{"--root", filepath.Join(h.Dir, "podman"), "--runroot", filepath.Join(h.Dir, "podman-run")}
	if out, err := exec.Command(podman, append(base, "pull", "-q", "oci:"+layout)...).CombinedOutput(); err != nil {
		return nil, "", fmt.Errorf("podman pull oci:%s: %v: %s", layout, err, out)
	}
	defer exec.Command(podman, append(base, "system", "reset", "-f")...).Run() //nolint:errcheck
	out, err := exec.Command(podman, append(base, "images", "-q")...).Output()
	if err != nil || len(strings.Fields(string(out))) == 0 {
		return nil, "", fmt.Errorf("podman images: %v", err)
	}
	img := strings.Fields(string(out))[0]
	variants := []struct {
		note string
		args []string
	}{
		{"crun", []string{"run", "--rm", "--network", "none", img, "true"}},
		{"runc (crun cannot run here), rlimits nofile/nproc 1024", []string{"--runtime", "runc", "run", "--rm", "--network", "none",
			"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", img, "true"}},
	}
	var why []string
	for _, v := range variants {
		cmd := append(append([]string{}, base...), v.args...)
		if out, err := exec.Command(podman, cmd...).CombinedOutput(); err != nil {
			why = append(why, fmt.Sprintf("%s: %v: %s", v.note, err, strings.TrimSpace(string(out))))
			continue
		}
		var ds []time.Duration
		for i := 0; i < reps; i++ {
			start := time.Now()
			if out, err := exec.Command(podman, cmd...).CombinedOutput(); err != nil {
				return nil, "", fmt.Errorf("podman run: %v: %s", err, out)
			}
			ds = append(ds, time.Since(start))
		}
		return ds, v.note, nil
	}
	return nil, "", fmt.Errorf("podman cannot run a container here: %s", strings.Join(why, "; "))
}

func row(what string, ds []time.Duration) {
	fmt.Printf("%-48s median %8s  min %8s  max %8s\n", what, ms(stat.Median(ds)), ms(stat.Min(ds)), ms(stat.Max(ds)))
}

func ratio(a, b []time.Duration) float64 { return float64(stat.Median(a)) / float64(stat.Median(b)) }

func ms(d time.Duration) string { return fmt.Sprintf("%.0fms", float64(d)/float64(time.Millisecond)) }
