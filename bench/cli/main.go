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
	"os/exec"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/boxctl/boxctl/bench/internal/stat"
	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/test/images/busybox"
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
	binDir, _ = filepath.Abs(binDir)
	testPlugins, _ = filepath.Abs(testPlugins)
	boxctl := filepath.Join(binDir, "boxctl")
	procvmm := filepath.Join(testPlugins, "boxctl-plugin-procvmm")
	for _, f := range []string{boxctl, procvmm} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%s missing: run make build build-test-plugins first", f)
		}
	}
	dir, err := os.MkdirTemp("", "bxcli")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	layout := filepath.Join(dir, "img")
	if _, err := busybox.BuildLayout(layout, busybox.Options{}); err != nil {
		return err
	}
	image := "oci-layout:" + layout
	home := filepath.Join(dir, "h")
	cfgPath := filepath.Join(dir, "config.hcl")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf("vmm = \"procvmm\"\nplugin \"procvmm\" {\n  path = %q\n}\n", procvmm)), 0o644); err != nil {
		return err
	}
	cli := func(args ...string) error {
		cmd := exec.Command(boxctl, append([]string{"--home", home, "--config", cfgPath}, args...)...)
		cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("boxctl %v: %v: %s", args, err, out)
		}
		return nil
	}
	if err := cli("run", "-d", "--name", "bench", image); err != nil {
		return err
	}
	defer cli("rm", "-f", "bench") //nolint:errcheck

	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	cfg.Home = home
	rt, err := core.Open(ctx, core.WithConfig(cfg), core.WithPluginDirs(binDir, testPlugins), core.WithMonitorBinary(boxctl), core.WithLogger(hclog.NewNullLogger(), nil))
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
