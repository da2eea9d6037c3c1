// Command coldboot measures the cold boot of a box, in one run on the same machine:
//
//	(a) `boxctl run --rm IMAGE -- true` wall time with the guest's bzImage (vmlinuz, which
//	    decompresses itself in the guest) and with the uncompressed ELF kernel (vmlinux,
//	    booted through its PVH entry point), runs interleaved so that load from other work
//	    on the machine hits both alike;
//	(b) where a boot's time goes, from a bare QEMU started like the qemu plugin starts it,
//	    its console read as it arrives: QEMU start to the kernel's first line (firmware,
//	    and for the bzImage its decompressor), to userspace (the kernel's "Run /init"), and
//	    to the agent's "modules loaded" line, with the module-loading time the agent reports.
//
// Run it with `make bench`, or after `make build guest`:
//
//	go run ./bench/coldboot -bin bin -guest build/guest
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/boxctl/boxctl/bench/internal/benchhome"
	"github.com/boxctl/boxctl/bench/internal/stat"
	"github.com/boxctl/boxctl/config"
)

func main() {
	bin := flag.String("bin", "bin", "directory with boxctl and its plugins")
	guest := flag.String("guest", "build/guest", "directory with vmlinuz, vmlinux and initramfs")
	runs := flag.Int("runs", 7, "runs measured for each kernel")
	flag.Parse()
	if err := run(*bin, *guest, *runs); err != nil {
		fmt.Fprintln(os.Stderr, "coldboot:", err)
		os.Exit(1)
	}
}

// kernel is one way of booting the guest.
type kernel struct {
	name string // what the table calls it
	file string // in the guest directory
}

var kernels = []kernel{{"bzImage (vmlinuz)", "vmlinuz"}, {"PVH ELF (vmlinux)", "vmlinux"}}

func run(binDir, guestDir string, runs int) error {
	guestDir, _ = filepath.Abs(guestDir)
	for _, k := range kernels {
		if _, err := os.Stat(filepath.Join(guestDir, k.file)); err != nil {
			return fmt.Errorf("%w: run `make guest` (guest/build.sh makes vmlinux next to vmlinuz)", err)
		}
	}
	h, err := benchhome.New(binDir, guestDir, "bxcold")
	if err != nil {
		return err
	}
	defer h.Close()
	fmt.Println("== cold boot: boxctl run --rm IMAGE -- true (QEMU; accel as the qemu plugin chooses) ==")
	if _, err := h.CLI("pull", "-q", h.Image); err != nil {
		return err
	}
	// One config file per kernel: the plugin's kernel setting picks it.
	configs := make([]string, len(kernels))
	for i, k := range kernels {
		configs[i] = filepath.Join(h.Dir, k.file+".hcl")
		body := fmt.Sprintf("plugin \"qemu\" {\n  config {\n    kernel = %q\n    initrd = %q\n  }\n}\n",
			filepath.Join(guestDir, k.file), filepath.Join(guestDir, "initramfs"))
		if err := os.WriteFile(configs[i], []byte(body), 0o644); err != nil {
			return err
		}
	}
	// Warm-up: builds the root disk and the blank disk base once, and fills the page cache.
	for _, c := range configs {
		if _, err := h.CLI("--config", c, "run", "--rm", h.Image, "--", "true"); err != nil {
			return err
		}
	}
	times := make([][]time.Duration, len(kernels))
	for r := 0; r < runs; r++ {
		for i, c := range configs {
			start := time.Now()
			if _, err := h.CLI("--config", c, "run", "--rm", h.Image, "--", "true"); err != nil {
				return err
			}
			times[i] = append(times[i], time.Since(start))
		}
	}
	fmt.Printf("(a) boxctl run --rm IMAGE -- true, %d runs each, interleaved\n", runs)
	for i, k := range kernels {
		fmt.Printf("    %-20s %s\n", k.name, summary(times[i]))
	}
	fmt.Printf("    vmlinux / bzImage:   %.2fx (medians)\n", float64(stat.Median(times[1]))/float64(stat.Median(times[0])))

	fmt.Printf("(b) bare QEMU boot, console timestamps on the host, %d runs each, interleaved\n", runs)
	phases := make([]map[string][]time.Duration, len(kernels))
	for i := range phases {
		phases[i] = map[string][]time.Duration{}
	}
	for r := 0; r < runs; r++ {
		for i, k := range kernels {
			p, err := bareBoot(filepath.Join(guestDir, k.file), filepath.Join(guestDir, "initramfs"))
			if err != nil {
				return fmt.Errorf("bare boot of %s: %w", k.file, err)
			}
			for name, d := range p {
				phases[i][name] = append(phases[i][name], d)
			}
		}
	}
	for i, k := range kernels {
		fmt.Printf("    %s\n", k.name)
		for _, name := range phaseNames {
			fmt.Printf("      %-28s %s\n", name, summary(phases[i][name]))
		}
	}
	return nil
}

func summary(d []time.Duration) string {
	r := func(x time.Duration) time.Duration { return x.Round(time.Millisecond) }
	return fmt.Sprintf("median %s  min %s  max %s", r(stat.Median(d)), r(stat.Min(d)), r(stat.Max(d)))
}

// The phases bareBoot reports, in order.
var phaseNames = []string{"to first kernel line", "to userspace (Run /init)", "to modules loaded", "module loading (agent)"}

var modulesTook = regexp.MustCompile(`msg="modules loaded" took=(\S+)`)

// bareBoot starts QEMU as the qemu plugin does (machine q35, TCG unless KVM is usable, the
// default cpus and memory, the same base kernel arguments) but with no disks and the console
// on a pipe, and times the console lines as they arrive. Without "quiet": the phases are
// found by kernel lines that quiet hides (which makes both boots a little slower alike). The agent, without disks, waits
// for its root; QEMU is killed once the agent has loaded its modules.
func bareBoot(kernelPath, initrd string) (map[string]time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	accel := "tcg"
	if kvmUsable() {
		accel = "kvm"
	}
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-machine", "q35,accel="+accel, "-cpu", "max",
		"-smp", strconv.Itoa(config.DefaultCPUs), "-m", strconv.Itoa(config.DefaultMemoryMiB)+"M",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-kernel", kernelPath, "-initrd", initrd,
		"-serial", "stdio",
		"-append", "console=ttyS0 panic=-1 reboot=t tsc=reliable no_timer_check i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd boxctl.debug=1 boxctl.serial=none")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	p := map[string]time.Duration{}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		now := time.Since(start)
		if p["to first kernel line"] == 0 && strings.Contains(line, "Linux version") {
			p["to first kernel line"] = now
		}
		if strings.Contains(line, "Run /init as init process") {
			p["to userspace (Run /init)"] = now
		}
		if m := modulesTook.FindStringSubmatch(line); m != nil {
			p["to modules loaded"] = now
			if d, err := time.ParseDuration(m[1]); err == nil {
				p["module loading (agent)"] = d
			}
			break
		}
	}
	for _, name := range phaseNames {
		if p[name] == 0 {
			return nil, fmt.Errorf("the console never showed the %q line (QEMU: %s)", name, strings.TrimSpace(stderr.String()))
		}
	}
	return p, nil
}

// kvmUsable is the qemu plugin's test for accel = "auto": /dev/kvm opens and the CPU
// advertises vmx or svm (a nested KVM without them cannot boot ordinary kernels).
func kvmUsable() bool {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	cpuinfo, err := os.ReadFile("/proc/cpuinfo")
	return err == nil && regexp.MustCompile(`(?m)^flags\s*:.*\b(vmx|svm)\b`).Match(cpuinfo)
}
