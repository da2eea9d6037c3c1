// Command vm measures boxctl on real VMs and prints the numbers, in one run
// with the same kernel, initramfs and accelerator:
//
//	(a) `boxctl run --rm IMAGE -- true` wall time, against a bare QEMU boot
//	    of the same kernel, initramfs and disks to agent-ready (target: at
//	    most 1.15x); and the same run with the hypervisor's confinement
//	    turned off (`sandbox { enabled = false }`), runs interleaved, for
//	    the cost of the confinement;
//	(b) exec round trip of `true` in a running box through the Go API and
//	    through the CLI, against the raw channel round trip (the same exec
//	    sent straight over the box's agent socket) (target for the API: at
//	    most 1.5x raw); the bare agent Ping is printed too;
//	(c) resident memory of the box monitor (target: at most 15 MiB).
//
// Run it with `make bench`, or after `make build guest`:
//
//	go run ./bench/vm -bin bin -guest build/guest
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/boxctl/boxctl/bench/internal/benchhome"
	"github.com/boxctl/boxctl/bench/internal/stat"
	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/sdk/agentmux"
)

func main() {
	bin := flag.String("bin", "bin", "directory with boxctl and its plugins")
	guest := flag.String("guest", "build/guest", "directory with vmlinuz and initramfs")
	runs := flag.Int("runs", 5, "boots measured for (a)")
	execs := flag.Int("execs", 50, "round trips measured for (b)")
	flag.Parse()
	if err := run(*bin, *guest, *runs, *execs); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(binDir, guestDir string, runs, execs int) error {
	ctx := context.Background()
	binDir, _ = filepath.Abs(binDir)
	guestDir, _ = filepath.Abs(guestDir)
	h, err := benchhome.New(binDir, guestDir, "bxvm")
	if err != nil {
		return err
	}
	defer h.Close()
	boxctl, dir, home, image := h.Boxctl, h.Dir, h.Home, h.Image
	cli := h.CLI
	fmt.Println("== boxctl VM benchmarks (QEMU; accel as the qemu plugin chooses) ==")
	if _, err := cli("pull", "-q", image); err != nil {
		return err
	}
	// Warm-up run: builds the root disk and the blank disk base once.
	if _, err := cli("run", "--rm", image, "--", "true"); err != nil {
		return err
	}
	// What one run costs in plugin traffic and store transactions, as the
	// runtime of the boxctl process logs them at debug level.
	counts, err := cli("--log-level", "debug", "run", "--rm", image, "--", "true")
	if err != nil {
		return err
	}
	runCounts := "(not logged)"
	if m := regexp.MustCompile(`runtime closed: (plugin_starts=\d+ plugin_calls=\d+ state_transactions=\d+)`).FindStringSubmatch(counts); m != nil {
		runCounts = m[1]
	}
	// The same runs unconfined, interleaved with the confined ones so that
	// load from other work on the machine hits both alike.
	unconfined := filepath.Join(dir, "unconfined.hcl")
	if err := os.WriteFile(unconfined, []byte("sandbox {\n  enabled = false\n}\n"), 0o644); err != nil {
		return err
	}
	var runTimes, offTimes []time.Duration
	for i := 0; i < runs; i++ {
		start := time.Now()
		if _, err := cli("run", "--rm", image, "--", "true"); err != nil {
			return err
		}
		runTimes = append(runTimes, time.Since(start))
		start = time.Now()
		if _, err := cli("--config", unconfined, "run", "--rm", image, "--", "true"); err != nil {
			return err
		}
		offTimes = append(offTimes, time.Since(start))
	}

	// A long-lived box for (b) and (c), and its QEMU command line for the
	// bare boot.
	if _, err := cli("run", "-d", "--name", "bench", image); err != nil {
		return err
	}
	defer cli("rm", "-f", "bench") //nolint:errcheck
	cfg := config.Default()
	cfg.Home = home
	rt, err := core.Open(ctx, core.WithConfig(cfg), core.WithPluginDirs(binDir), core.WithMonitorBinary(boxctl), core.WithLogger(hclog.NewNullLogger(), nil))
	if err != nil {
		return err
	}
	defer rt.Close()
	box, err := rt.GetInfo(ctx, "bench")
	if err != nil {
		return err
	}
	boxDir := filepath.Join(home, "boxes", box.ID)

	// The bare boots use the box's disks, so the box is stopped meanwhile.
	if _, err := cli("stop", "bench"); err != nil {
		return err
	}
	bare, err := bareBoots(ctx, boxDir, dir, runs)
	if err != nil {
		return err
	}
	if _, err := cli("start", "bench"); err != nil {
		return err
	}
	if box, err = rt.GetInfo(ctx, "bench"); err != nil {
		return err
	}
	mr, mb := stat.Median(runTimes).Round(10*time.Microsecond), stat.Median(bare).Round(10*time.Microsecond)
	fmt.Printf("(a) boxctl run --rm IMAGE -- true:   median %s (min %s) over %d runs\n", mr, stat.Min(runTimes).Round(10*time.Microsecond), runs)
	fmt.Printf("    bare qemu boot to agent ready:   median %s (min %s) over %d boots\n", mb, stat.Min(bare).Round(10*time.Microsecond), runs)
	fmt.Printf("    ratio run/bare:                  %.2fx (target <= 1.15x)\n", float64(mr)/float64(mb))
	fmt.Printf("    run --rm in the boxctl process:  %s (cached image)\n", runCounts)
	mo := stat.Median(offTimes).Round(10 * time.Microsecond)
	fmt.Printf("    same run, confinement off:       median %s (min %s); confinement costs %s (%+.1f%%)%s\n", mo, stat.Min(offTimes).Round(10*time.Microsecond),
		(mr - mo).Round(10*time.Microsecond), 100*(float64(mr)/float64(mo)-1), confinedNote())

	// (b) exec round trips.
	c, err := agentclient.Dial(ctx, box.Run.AgentSocket)
	if err != nil {
		return err
	}
	defer c.Close()
	raw := measure(execs, func() error { _, err := c.Ping(ctx); return err })
	direct := measure(execs, func() error {
		_, err := c.Exec(ctx, agentclient.ExecRequest{Argv: []string{"true"}}, nil, nil, nil, nil, nil)
		return err
	})
	api := measure(execs, func() error {
		res, err := rt.Exec(ctx, "bench", core.ExecOptions{Argv: []string{"true"}})
		if err == nil && res.ExitCode != 0 {
			err = fmt.Errorf("true exited %d", res.ExitCode)
		}
		return err
	})
	cliTimes := measure(min(execs, 20), func() error { _, err := cli("exec", "bench", "--", "true"); return err })
	fmt.Printf("(b) exec true, raw channel:          median %s (agent client straight on the box's agent socket)\n", stat.Median(direct).Round(10*time.Microsecond))
	fmt.Printf("    exec true, Go API (rt.Exec):     median %s (%.2fx raw; target <= 1.5x)\n", stat.Median(api).Round(10*time.Microsecond), float64(stat.Median(api).Round(10*time.Microsecond))/float64(stat.Median(direct).Round(10*time.Microsecond)))
	fmt.Printf("    exec true, CLI (boxctl exec):    median %s (%.2fx raw; a new process each time)\n", stat.Median(cliTimes).Round(10*time.Microsecond), float64(stat.Median(cliTimes).Round(10*time.Microsecond))/float64(stat.Median(direct).Round(10*time.Microsecond)))
	fmt.Printf("    agent Ping round trip:           median %s (transport only, no process started)\n", stat.Median(raw).Round(10*time.Microsecond))

	// (c) memory.
	fmt.Printf("(c) monitor RSS:                     %s (target <= 15 MiB)\n", rss(box.Run.Monitor.PID))
	fmt.Printf("    VM process (qemu launcher) RSS:  %s\n", rss(box.Run.VM.PID))
	if b, err := os.ReadFile(filepath.Join(boxDir, "qemu.pid")); err == nil {
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		fmt.Printf("    QEMU RSS:                        %s\n", rss(pid))
	}
	return nil
}

// bareBoots boots QEMU with exactly the command line boxctl used for the
// box, opening the files and sockets the launcher hands it (the box's own
// writable disk copied aside), without the launcher's confinement, and
// times each boot until the guest agent answers with its root mounted.
func bareBoots(ctx context.Context, boxDir, tmp string, n int) ([]time.Duration, error) {
	raw, err := os.ReadFile(filepath.Join(boxDir, "qemu-launch.json"))
	if err != nil {
		return nil, err
	}
	var lc struct {
		QEMU string   `json:"qemu"`
		Args []string `json:"args"`
		FDs  []struct {
			Kind string `json:"kind"`
			Path string `json:"path"`
		} `json:"fds"`
	}
	if err := json.Unmarshal(raw, &lc); err != nil {
		return nil, err
	}
	run := filepath.Join(tmp, "bare")
	var times []time.Duration
	for i := 0; i < n; i++ {
		_ = os.RemoveAll(run)
		if err := os.MkdirAll(run, 0o700); err != nil {
			return nil, err
		}
		serial := filepath.Join(run, "agent-serial.sock")
		agent := filepath.Join(run, "agent.sock")
		var files []*os.File
		closeAll := func() {
			for _, f := range files {
				f.Close()
			}
		}
		for _, fd := range lc.FDs {
			var f *os.File
			var err error
			switch fd.Kind {
			case "disk-ro":
				f, err = os.Open(fd.Path)
			case "disk-rw":
				// A copy, so the box's disk is not touched.
				cp := filepath.Join(run, filepath.Base(fd.Path))
				if out, cerr := exec.Command("cp", "--sparse=always", fd.Path, cp).CombinedOutput(); cerr != nil {
					err = fmt.Errorf("copy %s: %v: %s", fd.Path, cerr, out)
					break
				}
				f, err = os.OpenFile(cp, os.O_RDWR, 0)
			case "log":
				// Write-only: QEMU takes a descriptor from an fd set only
				// when its access mode matches the open it would do.
				f, err = os.OpenFile(filepath.Join(run, "console.log"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
			case "listen":
				f, err = listenFile(filepath.Join(run, filepath.Base(fd.Path)))
			case "events", "net":
				var fds [2]int
				if fds, err = syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0); err == nil {
					// QEMU's end only: the launcher's event monitor and
					// user-mode network are not part of a bare boot.
					syscall.Close(fds[1])
					f = os.NewFile(uintptr(fds[0]), fd.Kind)
				}
			default:
				err = fmt.Errorf("launch config: descriptor kind %q", fd.Kind)
			}
			if err != nil {
				closeAll()
				return nil, err
			}
			files = append(files, f)
		}
		start := time.Now()
		cmd := exec.Command(lc.QEMU, lc.Args...)
		cmd.ExtraFiles = files
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Start()
		closeAll()
		if err != nil {
			return nil, err
		}
		mctx, cancel := context.WithCancel(ctx)
		mux := agentmux.New(agentmux.UnixDialer(serial), agent, agentmux.Options{})
		go func() { _ = mux.Run(mctx) }()
		c, err := agentclient.Dial(ctx, agent)
		if err == nil {
			wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
			_, err = c.WaitReady(wctx)
			wcancel()
		}
		times = append(times, time.Since(start))
		if c != nil {
			c.Close()
		}
		cancel()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if err != nil {
			console, _ := os.ReadFile(filepath.Join(run, "console.log"))
			return nil, fmt.Errorf("bare boot: %w\nQEMU: %s\nconsole: %s", err, stderr.String(), console)
		}
	}
	return times, nil
}

// listenFile returns a listening unix socket at path as a file.
func listenFile(path string) (*os.File, error) {
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	return l.(*net.UnixListener).File()
}

// confinedNote says what the confined runs were confined by.
func confinedNote() string {
	if os.Geteuid() != 0 {
		return " (not root: confinement is QEMU's seccomp filter and no-new-privileges only)"
	}
	return " (root: per-box user, seccomp filter, no-new-privileges)"
}

func measure(n int, fn func() error) []time.Duration {
	var out []time.Duration
	for i := 0; i < n; i++ {
		t := time.Now()
		if err := fn(); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		out = append(out, time.Since(t))
	}
	return out
}

func rss(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "unknown (process gone)"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			kb, _ := strconv.Atoi(strings.Fields(line)[1])
			return fmt.Sprintf("%.1f MiB", float64(kb)/1024)
		}
	}
	return "unknown"
}
