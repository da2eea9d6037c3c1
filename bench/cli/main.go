// Command cli measures what the boxctl process itself costs: `boxctl exec
// BOX -- true` against the same exec through the Go API (rt.Exec) on one
// running box, interleaved so that load from other work hits both alike,
// and `boxctl version` (the binary's start-up alone). The box runs on the
// procvmm test double (no VM: the agent round trip is a local socket), so
// the difference is the CLI's own overhead. Build first: make build
// build-test-plugins.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/boxctl/boxctl/bench/internal/benchhome"
	"github.com/boxctl/boxctl/bench/internal/stat"
	"github.com/boxctl/boxctl/core"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding boxctl and its plugins")
	testPlugins := flag.String("test-plugins", "build/test-plugins", "directory holding boxctl-plugin-procvmm")
	n := flag.Int("n", 40, "execs measured of each kind")
	flag.Parse()
	if err := run(*bin, *testPlugins, *n); err != nil {
		fmt.Fprintln(os.Stderr, "bench/cli:", err)
		os.Exit(1)
	}
}

func run(binDir, testPlugins string, n int) error {
	ctx := context.Background()
	h, err := benchhome.NewWithDouble(binDir, testPlugins, "bxcli")
	if err != nil {
		return err
	}
	defer h.Close()
	cli := func(args ...string) error {
		_, err := h.CLI(args...)
		return err
	}
	if err := cli("run", "-d", "--name", "bench", h.Image); err != nil {
		return err
	}
	defer cli("rm", "-f", "bench") //nolint:errcheck

	rt, err := h.Runtime(ctx)
	if err != nil {
		return err
	}
	defer rt.Close()
	apiExec := func() error {
		res, err := rt.Exec(ctx, "bench", core.ExecOptions{Argv: []string{"true"}})
		if err == nil && res.ExitCode != 0 {
			err = fmt.Errorf("exit %d", res.ExitCode)
		}
		return err
	}
	for i := 0; i < 3; i++ { // warm up both
		if err := apiExec(); err != nil {
			return err
		}
		if err := cli("exec", "bench", "--", "true"); err != nil {
			return err
		}
	}
	var api, cliT, ver []time.Duration
	for i := 0; i < n; i++ {
		t := time.Now()
		if err := apiExec(); err != nil {
			return err
		}
		api = append(api, time.Since(t))
		t = time.Now()
		if err := cli("exec", "bench", "--", "true"); err != nil {
			return err
		}
		cliT = append(cliT, time.Since(t))
		t = time.Now()
		if err := cli("version"); err != nil {
			return err
		}
		ver = append(ver, time.Since(t))
	}
	ma, mc, mv := stat.Median(api), stat.Median(cliT), stat.Median(ver)
	r := func(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
	fmt.Println("== boxctl CLI overhead (procvmm box: no VM) ==")
	fmt.Printf("exec true, Go API (rt.Exec):   median %s (min %s) over %d\n", r(ma), r(stat.Min(api)), n)
	fmt.Printf("exec true, CLI (boxctl exec):  median %s (min %s); %.2fx the API (target <= 1.3x)\n", r(mc), r(stat.Min(cliT)), float64(mc)/float64(ma))
	fmt.Printf("boxctl version (start-up):     median %s (min %s)\n", r(mv), r(stat.Min(ver)))
	return nil
}
