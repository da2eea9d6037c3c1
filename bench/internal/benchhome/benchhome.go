// Package benchhome is the boxctl installation the VM benchmarks run in: a
// temporary home, the busybox test image as an OCI layout, and the boxctl
// binary run with the guest kernel the benchmark was given.
package benchhome

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/hashicorp/go-hclog"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/test/images/busybox"
)

// Home is one temporary boxctl home.
type Home struct {
	Dir    string // the temporary directory holding everything
	Home   string // boxctl's home
	Image  string // the busybox image's reference
	Boxctl string // path of the boxctl binary
	// Config is the config file boxctl runs with ("" for none: the
	// defaults); pluginDirs are where a Runtime finds plugins.
	Config     string
	pluginDirs []string
	env        []string
}

// New makes a home under a new temporary directory named after prefix;
// binDir holds boxctl and its plugins, guestDir the guest kernel and
// initramfs ("" for none). Close removes it.
func New(binDir, guestDir, prefix string) (*Home, error) {
	binDir, _ = filepath.Abs(binDir)
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, err
	}
	layout := filepath.Join(dir, "img")
	if _, err := busybox.BuildLayout(layout, busybox.Options{}); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	h := &Home{
		Dir: dir, Home: filepath.Join(dir, "h"), Image: "oci-layout:" + layout,
		Boxctl:     filepath.Join(binDir, "boxctl"),
		pluginDirs: []string{binDir},
		env:        append(os.Environ(), "XDG_CONFIG_HOME="+dir),
	}
	if guestDir != "" {
		guestDir, _ = filepath.Abs(guestDir)
		h.env = append(h.env, "BOXCTL_GUEST_DIR="+guestDir)
	}
	return h, nil
}

// NewWithDouble is New for benchmarks of boxctl's own overhead: its boxes
// run on the procvmm test double (a process, no VM) from testPlugins.
func NewWithDouble(binDir, testPlugins, prefix string) (*Home, error) {
	testPlugins, _ = filepath.Abs(testPlugins)
	procvmm := filepath.Join(testPlugins, "boxctl-plugin-procvmm")
	absBin, _ := filepath.Abs(binDir)
	for _, f := range []string{filepath.Join(absBin, "boxctl"), procvmm} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("%s missing: run make build build-test-plugins first", f)
		}
	}
	h, err := New(binDir, "", prefix)
	if err != nil {
		return nil, err
	}
	h.Config = filepath.Join(h.Dir, "config.hcl")
	if err := os.WriteFile(h.Config, []byte(fmt.Sprintf("vmm = \"procvmm\"\nplugin \"procvmm\" {\n  path = %q\n}\n", procvmm)), 0o644); err != nil {
		h.Close()
		return nil, err
	}
	h.pluginDirs = append(h.pluginDirs, testPlugins)
	return h, nil
}

// Args are the global flags that point boxctl at this home.
func (h *Home) Args() []string {
	if h.Config == "" {
		return []string{"--home", h.Home}
	}
	return []string{"--home", h.Home, "--config", h.Config}
}

// Env is the environment boxctl runs with on this home.
func (h *Home) Env() []string { return append([]string{}, h.env...) }

// Runtime opens the home in this process, as the CLI would, quiet.
func (h *Home) Runtime(ctx context.Context) (*core.Runtime, error) {
	cfg := config.Default()
	if h.Config != "" {
		var err error
		if cfg, err = config.Load(h.Config); err != nil {
			return nil, err
		}
	}
	cfg.Home = h.Home
	return core.Open(ctx, core.WithConfig(cfg), core.WithPluginDirs(h.pluginDirs...), core.WithMonitorBinary(h.Boxctl), core.WithLogger(hclog.NewNullLogger(), nil))
}

// CLI runs boxctl on the home and returns its combined output.
func (h *Home) CLI(args ...string) (string, error) { return h.CLIWithEnv(nil, args...) }

// CLIWithEnv is CLI with extra environment variables (KEY=VALUE).
func (h *Home) CLIWithEnv(env []string, args ...string) (string, error) {
	cmd := exec.Command(h.Boxctl, append(h.Args(), args...)...)
	cmd.Env = append(append([]string{}, h.env...), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("boxctl %v: %v: %s", args, err, out)
	}
	return string(out), nil
}

// Close removes the home and everything in it.
func (h *Home) Close() { os.RemoveAll(h.Dir) }
