// Command foundation measures the core's own speed and prints the numbers:
//
//   - `boxctl ls -a` wall time with 10,000 boxes in the store (target ≤ 100 ms)
//   - create throughput for Configured boxes, through the Go API and
//     through parallel `boxctl create` processes (target ≥ 200 boxes/s)
//   - one plugin RPC round trip over go-plugin, p50 and p99 (target ≤ 100 µs, issue 12; bench/rpc takes it apart)
//
// Run it with `make bench` (which builds the binaries) or
// `go run ./bench/foundation -bin bin -test-plugins build/test-plugins`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/boxctl/boxctl/bench/internal/stat"
	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/pluginhost"
	"github.com/boxctl/boxctl/core/state"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding boxctl")
	testPlugins := flag.String("test-plugins", "build/test-plugins", "directory holding boxctl-plugin-procvmm")
	boxes := flag.Int("boxes", 10000, "boxes in the store for the ls measurement")
	creates := flag.Int("creates", 1000, "boxes created for the throughput measurement")
	rpcs := flag.Int("rpcs", 5000, "plugin round trips measured")
	keep := flag.String("keep", "", "seed the ls home in this directory and keep it (for profiling)")
	flag.Parse()
	if *keep != "" {
		if err := seed(context.Background(), *keep, *boxes); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*bin, *testPlugins, *boxes, *creates, *rpcs); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(bin, testPlugins string, nBoxes, nCreates, nRPCs int) error {
	ctx := context.Background()
	boxctl, err := filepath.Abs(filepath.Join(bin, "boxctl"))
	if err != nil {
		return err
	}
	if _, err := os.Stat(boxctl); err != nil {
		return fmt.Errorf("%s missing: run make build first", boxctl)
	}
	fmt.Println("== boxctl foundation benchmarks ==")

	// 1. ls with many boxes.
	home, err := os.MkdirTemp("", "bxbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(home)
	if err := seed(ctx, home, nBoxes); err != nil {
		return err
	}
	procvmm, err := filepath.Abs(filepath.Join(testPlugins, "boxctl-plugin-procvmm"))
	if err != nil {
		return err
	}
	// create starts the vmm and images plugins to check the box can start:
	// procvmm from the test plugins, oci from next to boxctl.
	cfgPath := filepath.Join(home, "config.hcl")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf("vmm = \"procvmm\"\nplugin \"procvmm\" {\n  path = %q\n}\n", procvmm)), 0o644); err != nil {
		return err
	}
	out, err := exec.Command(boxctl, "--home", home, "--config", cfgPath, "ls", "-a").Output()
	if err != nil {
		return fmt.Errorf("boxctl ls: %w", err)
	}
	if lines := countLines(out); lines != nBoxes+1 {
		return fmt.Errorf("ls printed %d lines, want %d", lines, nBoxes+1)
	}
	// Timed runs write to /dev/null, as `boxctl ls -a > file` would: the
	// number is boxctl's, not a terminal's.
	var lsTimes []time.Duration
	for i := 0; i < 21; i++ {
		start := time.Now()
		if err := exec.Command(boxctl, "--home", home, "--config", cfgPath, "ls", "-a").Run(); err != nil {
			return fmt.Errorf("boxctl ls: %w", err)
		}
		lsTimes = append(lsTimes, time.Since(start))
	}
	fmt.Printf("boxctl ls -a, %d boxes:        median %s, min %s (target <= 100ms)\n", nBoxes, stat.Median(lsTimes).Round(100*time.Microsecond), stat.Min(lsTimes).Round(100*time.Microsecond))

	// 2. create throughput.
	home2, err := os.MkdirTemp("", "bxbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(home2)
	cfg := config.Default()
	cfg.VMM = "procvmm"
	rt, err := core.Open(ctx, core.WithConfig(cfg), core.WithHome(home2), core.WithLogger(hclog.NewNullLogger(), nil),
		core.WithPluginDirs(filepath.Dir(boxctl), filepath.Dir(procvmm)))
	if err != nil {
		return err
	}
	start := time.Now()
	for i := 0; i < nCreates; i++ {
		if _, err := rt.Create(ctx, core.BoxOptions{Name: fmt.Sprintf("seq%d", i), Config: model.BoxConfig{Image: "bench"}}); err != nil {
			return err
		}
	}
	seq := time.Since(start)
	fmt.Printf("create via Go API, sequential:     %.0f boxes/s (%d in %s) (target >= 200/s)\n", float64(nCreates)/seq.Seconds(), nCreates, seq.Round(time.Millisecond))
	start = time.Now()
	var wg sync.WaitGroup
	var failed atomic.Int32
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < nCreates; i += 4 {
				if _, err := rt.Create(ctx, core.BoxOptions{Name: fmt.Sprintf("par%d", i), Config: model.BoxConfig{Image: "bench"}}); err != nil {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	par := time.Since(start)
	fmt.Printf("create via Go API, 4 goroutines:   %.0f boxes/s (%d in %s, %d failed)\n", float64(nCreates)/par.Seconds(), nCreates, par.Round(time.Millisecond), failed.Load())
	_ = rt.Close()
	nCLI := 200
	start = time.Now()
	sem := make(chan struct{}, 8)
	for i := 0; i < nCLI; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := exec.Command(boxctl, "--home", home2, "--config", cfgPath, "create", "--name", fmt.Sprintf("cli%d", i), "bench").Run(); err != nil {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	cli := time.Since(start)
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d creates failed", n)
	}
	fmt.Printf("create via boxctl, 8 processes:    %.0f boxes/s (%d in %s)\n", float64(nCLI)/cli.Seconds(), nCLI, cli.Round(time.Millisecond))

	// 3. plugin RPC round trip.
	pcfg := config.Default()
	pcfg.Home = home2
	pcfg.VMM = "procvmm"
	host := pluginhost.New(pcfg, pluginhost.WithSearchDirs(testPlugins))
	defer host.Close()
	vmm, err := host.VMM(ctx)
	if err != nil {
		return err
	}
	for i := 0; i < 200; i++ { // warm up
		if _, err := vmm.Info(ctx); err != nil {
			return err
		}
	}
	rtts := make([]time.Duration, nRPCs)
	for i := range rtts {
		t := time.Now()
		if _, err := vmm.Info(ctx); err != nil {
			return err
		}
		rtts[i] = time.Since(t)
	}
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
	fmt.Printf("plugin RPC round trip (Info), %d:  p50 %s, p99 %s (target p50 <= 100µs)\n", nRPCs, rtts[len(rtts)/2], rtts[len(rtts)*99/100])
	return nil
}

// seed writes n Configured boxes straight into the store, with their
// directories and lock files, as n creates would have.
func seed(ctx context.Context, home string, n int) error {
	st, err := state.Open(ctx, home)
	if err != nil {
		return err
	}
	for _, d := range []string{"boxes", "locks"} {
		if err := os.MkdirAll(filepath.Join(home, d), 0o700); err != nil {
			return err
		}
	}
	now := time.Now()
	for done := 0; done < n; {
		batch := min(1000, n-done)
		err := st.Update(ctx, func(tx *state.Tx) error {
			for i := done; i < done+batch; i++ {
				id := fmt.Sprintf("%032x", i+1)
				b := &model.Box{ID: id, Name: fmt.Sprintf("box%d", i), CreatedAt: now.Add(time.Duration(i) * time.Millisecond),
					Config: model.BoxConfig{Image: "docker.io/library/alpine:latest", CPUs: 1, MemoryMiB: 512, DiskSize: 10 << 30}, Status: model.StatusConfigured, DiskID: id}
				if err := tx.PutBox(b); err != nil {
					return err
				}
				if err := os.Mkdir(filepath.Join(home, "boxes", id), 0o700); err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(home, "locks", id+".lock"), nil, 0o600); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		done += batch
	}
	return nil
}

func countLines(b []byte) int {
	n := 0
	for _, c := range b {
		if c == '\n' {
			n++
		}
	}
	return n
}
