// Command coldboot measures the cold boot of a box, in one run on the same machine:
//
//	(a) `boxctl run --rm IMAGE -- true` wall time with the guest's bzImage (vmlinuz, which
//	    decompresses itself in the guest) and with the uncompressed ELF kernel (vmlinux,
//	    booted through its PVH entry point), each with and without the kernel's crypto
//	    self-tests (the qemu plugin turns them off), runs interleaved so that load from
//	    other work on the machine hits all alike;
//	(b) where a boot's time goes, from a bare QEMU started like the qemu plugin starts it,
//	    its console read as it arrives: QEMU start to the kernel's first line (firmware,
//	    and for the bzImage its decompressor), to userspace (the kernel's "Run /init"), and
//	    to the agent's "modules loaded" line, with the module-loading time the agent reports,
//	    and the CPU time QEMU used to each point (steadier than wall time on a busy machine);
//	(c) the floor: QEMU start to a one-line busybox init with the same kernel, against QEMU
//	    start to the boxctl agent's ready line, and `run --rm` against that floor.
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
	"io"
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
	"github.com/boxctl/boxctl/internal/kvmprobe"
)

func main() {
	bin := flag.String("bin", "bin", "directory with boxctl and its plugins")
	guest := flag.String("guest", "build/guest", "directory with vmlinuz, vmlinux and initramfs")
	runs := flag.Int("runs", 7, "runs measured for each kernel")
	sections := flag.String("sections", "abc", "which of the sections (a), (b) and (c) to run")
	flag.Parse()
	if err := run(*bin, *guest, *runs, *sections); err != nil {
		fmt.Fprintln(os.Stderr, "coldboot:", err)
		os.Exit(1)
	}
}

// variant is one way of booting the guest.
type variant struct {
	name   string // what the tables call it
	file   string // the kernel, in the guest directory
	tests  bool   // run the crypto self-tests (cryptomgr.notests=0 after the plugin's notests)
	before bool   // the configuration before issue 11
}

var variants = []variant{
	{"bzImage, crypto self-tests", "vmlinuz", true, true},
	{"bzImage", "vmlinuz", false, false},
	{"vmlinux, crypto self-tests", "vmlinux", true, false},
	{"vmlinux (the default)", "vmlinux", false, false},
}

func run(binDir, guestDir string, runs int, sections string) error {
	guestDir, _ = filepath.Abs(guestDir)
	for _, f := range []string{"vmlinuz", "vmlinux", "initramfs"} {
		if _, err := os.Stat(filepath.Join(guestDir, f)); err != nil {
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
	// One config file per variant: the plugin's kernel and kernel_args settings pick it.
	configs := make([]string, len(variants))
	for i, v := range variants {
		configs[i] = filepath.Join(h.Dir, fmt.Sprintf("v%d.hcl", i))
		args := ""
		if v.tests {
			args = `    kernel_args = ["cryptomgr.notests=0"]` + "\n"
		}
		body := fmt.Sprintf("plugin \"qemu\" {\n  config {\n    kernel = %q\n    initrd = %q\n%s  }\n}\n",
			filepath.Join(guestDir, v.file), filepath.Join(guestDir, "initramfs"), args)
		if err := os.WriteFile(configs[i], []byte(body), 0o644); err != nil {
			return err
		}
	}
	// Warm-up: builds the root disk and the blank disk base once, and fills the page cache.
	for _, c := range configs {
		if _, err := h.CLI("--config", c, "run", "--rm", "--cold", h.Image, "--", "true"); err != nil {
			return err
		}
	}
	times := make([][]time.Duration, len(variants))
	for r := 0; r < runs && strings.ContainsAny(sections, "ac"); r++ {
		for i, c := range configs {
			start := time.Now()
			// --cold: the cold path, not the image's boot template.
			if _, err := h.CLI("--config", c, "run", "--rm", "--cold", h.Image, "--", "true"); err != nil {
				return err
			}
			times[i] = append(times[i], time.Since(start))
		}
	}
	if strings.Contains(sections, "a") {
		fmt.Printf("(a) boxctl run --rm --cold IMAGE -- true, %d runs each, interleaved\n", runs)
		first, last := stat.Median(times[0]), stat.Median(times[len(times)-1])
		for i, v := range variants {
			note := ""
			if v.before {
				note = "  (before)"
			}
			fmt.Printf("    %-28s %s%s\n", v.name, summary(times[i]), note)
		}
		fmt.Printf("    default / before:            %.2fx (medians)\n", float64(last)/float64(first))
	}
	if strings.Contains(sections, "b") {
		if err := bareBoots(guestDir, runs); err != nil {
			return err
		}
	}
	if strings.Contains(sections, "c") {
		return floorBoots(h, guestDir, configs[len(configs)-1], times[len(times)-1], runs)
	}
	return nil
}

// bareBoots is section (b): where a bare boot's time goes, for each variant.
func bareBoots(guestDir string, runs int) error {
	fmt.Printf("(b) bare QEMU boot, console timestamps on the host, %d runs each, interleaved\n", runs)
	phases := make([]map[string][]time.Duration, len(variants))
	for i := range phases {
		phases[i] = map[string][]time.Duration{}
	}
	for r := 0; r < runs; r++ {
		for i, v := range variants {
			p, err := bareBoot(filepath.Join(guestDir, v.file), filepath.Join(guestDir, "initramfs"), v.tests)
			if err != nil {
				return fmt.Errorf("bare boot of %s: %w", v.file, err)
			}
			for name, d := range p {
				phases[i][name] = append(phases[i][name], d)
			}
		}
	}
	for i, v := range variants {
		fmt.Printf("    %s\n", v.name)
		for _, name := range phaseNames {
			fmt.Printf("      %-30s %s\n", name, summary(phases[i][name]))
		}
	}

	return nil
}

// floorBoots is section (c): the floor, the same kernel to a one-line
// busybox init, against a real box from its launch plan to its agent's
// answer, and coldRuns (section (a)'s run --rm --cold of the default
// variant) against the floor.
func floorBoots(h *benchhome.Home, guestDir, config string, coldRuns []time.Duration, runs int) error {
	floor, err := floorInitramfs(h.Dir)
	if err != nil {
		return err
	}
	kernel := filepath.Join(guestDir, "vmlinux")
	base := "console=ttyS0 quiet panic=-1 reboot=t tsc=reliable no_timer_check i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd cryptomgr.notests"
	var floorTimes, agentTimes []time.Duration
	for r := 0; r < runs; r++ {
		d, err := bootTo(kernel, floor, base, floorMarker)
		if err != nil {
			return fmt.Errorf("floor boot: %w", err)
		}
		floorTimes = append(floorTimes, d)
		// A real box (its disks, network, agent channel): the core's own
		// measure from the VM's launch plan to the agent's answer.
		out, err := h.CLIWithEnv([]string{"BOXCTL_LOG=debug"}, "--config", config, "run", "--rm", "--cold", h.Image, "--", "true")
		if err != nil {
			return err
		}
		m := vmReady.FindStringSubmatch(out)
		if m == nil {
			return fmt.Errorf("no \"vm ready\" line in boxctl's debug output")
		}
		if d, err = time.ParseDuration(m[1]); err != nil {
			return err
		}
		agentTimes = append(agentTimes, d)
	}
	fmt.Printf("(c) QEMU start to ready, vmlinux, %d runs each, interleaved\n", runs)
	fmt.Printf("    %-28s %s\n", "one-line busybox init:", summary(floorTimes))
	fmt.Printf("    %-28s %s\n", "boxctl box, plan to agent:", summary(agentTimes))
	fmt.Printf("    agent / floor:               %.2fx (medians)\n", float64(stat.Median(agentTimes))/float64(stat.Median(floorTimes)))
	coldRun := stat.Median(coldRuns)
	fmt.Printf("    run --rm --cold / floor:     %.2fx (medians; issue 12's target <= 1.25x)\n", float64(coldRun)/float64(stat.Median(floorTimes)))
	return nil
}

func summary(d []time.Duration) string {
	r := func(x time.Duration) time.Duration { return x.Round(time.Millisecond) }
	return fmt.Sprintf("median %s  min %s  max %s", r(stat.Median(d)), r(stat.Min(d)), r(stat.Max(d)))
}

// The phases bareBoot reports, in order.
var phaseNames = []string{
	"to first kernel line", "to userspace (Run /init)", "to modules loaded", "module loading (agent)",
	"QEMU CPU to first kernel line", "QEMU CPU to userspace", "QEMU CPU to modules loaded",
}

var modulesTook = regexp.MustCompile(`msg="modules loaded" took=(\S+)`)

// bareBoot starts QEMU as the qemu plugin does (machine q35, TCG unless KVM is usable, the
// default cpus and memory, the same base kernel arguments) but with no disks and the console
// on a pipe, and times the console lines as they arrive. Without "quiet": the phases are
// found by kernel lines that quiet hides (which makes both boots a little slower alike). The agent, without disks, waits
// for its root; QEMU is killed once the agent has loaded its modules.
func bareBoot(kernelPath, initrd string, cryptoTests bool) (map[string]time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	accel := "tcg"
	if kvmUsable() {
		accel = "kvm"
	}
	cmdline := "console=ttyS0 panic=-1 reboot=t tsc=reliable no_timer_check i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd cryptomgr.notests boxctl.debug=1 boxctl.serial=none"
	if cryptoTests {
		cmdline += " cryptomgr.notests=0"
	}
	cmd, out, stderr, err := startBareQEMU(ctx, accel, kernelPath, initrd, cmdline)
	if err != nil {
		return nil, err
	}
	start := time.Now()
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
			p["QEMU CPU to first kernel line"] = cpuTime(cmd.Process.Pid)
		}
		if strings.Contains(line, "Run /init as init process") {
			p["to userspace (Run /init)"] = now
			p["QEMU CPU to userspace"] = cpuTime(cmd.Process.Pid)
		}
		if m := modulesTook.FindStringSubmatch(line); m != nil {
			p["to modules loaded"] = now
			p["QEMU CPU to modules loaded"] = cpuTime(cmd.Process.Pid)
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

// startBareQEMU starts QEMU as the qemu plugin would for a cold boot (q35,
// the default vCPUs and memory), without disks or devices, the console on
// the returned reader.
func startBareQEMU(ctx context.Context, accel, kernel, initrd, cmdline string) (*exec.Cmd, io.Reader, *strings.Builder, error) {
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-machine", "q35,accel="+accel, "-cpu", "max",
		"-smp", strconv.Itoa(config.DefaultCPUs), "-m", strconv.Itoa(config.DefaultMemoryMiB)+"M",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd,
		"-serial", "stdio",
		"-append", cmdline)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, nil, err
	}
	stderr := &strings.Builder{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		return nil, nil, nil, err
	}
	return cmd, out, stderr, nil
}

// vmReady is the core's debug line saying how long a box took from its
// launch plan to its agent's answer.
var vmReady = regexp.MustCompile(`vm ready: .*took=([0-9.]+[a-zµ]+)`)

// floorMarker is what the floor's init prints.
const floorMarker = "BOXCTL-FLOOR-READY"

// floorInitramfs writes, in dir, the floor's initramfs: busybox-static as
// /bin/busybox and an /init that prints one line and powers off. It is made
// with the cpio tool (busybox's own applet where cpio is missing).
func floorInitramfs(dir string) (string, error) {
	root := filepath.Join(dir, "floor-root")
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		return "", err
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return "", fmt.Errorf("busybox-static: %w (apt-get install busybox-static)", err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "busybox"), bb, 0o755); err != nil {
		return "", err
	}
	initScript := "#!/bin/busybox sh\n/bin/busybox echo " + floorMarker + "\n/bin/busybox poweroff -f\n"
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(initScript), 0o755); err != nil {
		return "", err
	}
	out := filepath.Join(dir, "floor.cpio")
	tool := "cpio"
	args := []string{"-o", "-H", "newc", "--quiet"}
	if _, err := exec.LookPath(tool); err != nil {
		tool, args = "/bin/busybox", []string{"cpio", "-o", "-H", "newc"}
	}
	cmd := exec.Command(tool, args...)
	cmd.Dir = root
	cmd.Stdin = strings.NewReader("init\nbin\nbin/busybox\n")
	f, err := os.Create(out)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var msg strings.Builder
	cmd.Stdout, cmd.Stderr = f, &msg
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %v: %s", tool, err, msg.String())
	}
	return out, f.Sync()
}

// bootTo boots kernel with initrd and returns the time from QEMU's start
// to the first console line containing marker.
func bootTo(kernel, initrd, cmdline, marker string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	accel := "tcg"
	if kvmUsable() {
		accel = "kvm"
	}
	start := time.Now()
	cmd, out, stderr, err := startBareQEMU(ctx, accel, kernel, initrd, cmdline)
	if err != nil {
		return 0, err
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if strings.Contains(sc.Text(), marker) {
			return time.Since(start), nil
		}
	}
	return 0, fmt.Errorf("the console never showed %q (QEMU: %s)", marker, strings.TrimSpace(stderr.String()))
}

// cpuTime returns the CPU time process pid has used (user and system, all threads). With one
// vCPU under TCG it is the boot's work, and much less disturbed by other load on the machine
// than the wall time.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const userHZ = 100 // the unit of /proc times on Linux
	return time.Duration(utime+stime) * time.Second / userHZ
}

// kvmUsable is the qemu plugin's test for accel = "auto": the KVM probe runs a
// tiny guest through /dev/kvm at hardware speed (package kvmprobe).
func kvmUsable() bool {
	return kvmprobe.Probe(context.Background()).Usable
}
