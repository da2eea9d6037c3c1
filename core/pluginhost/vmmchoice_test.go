package pluginhost_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core/pluginhost"
	"github.com/boxctl/boxctl/test/testbin"
)

// autoHost is a Host for vmm = "auto" whose candidates are the given
// plugin blocks (procvmm test doubles standing in for libkrun and qemu),
// searching only an empty directory, so that a candidate without a block
// is not found.
func autoHost(t *testing.T, blocks string) *pluginhost.Host {
	t.Helper()
	home := testbin.ShortTempDir(t)
	file := testbin.WriteFile(t, home, "config.hcl", fmt.Sprintf("home = %q\nvmm = \"auto\"\n%s", home, blocks))
	cfg, err := config.LoadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	h := pluginhost.New(cfg, pluginhost.WithSearchDirs(t.TempDir()), pluginhost.WithLogger(hclog.NewNullLogger(), nil))
	t.Cleanup(h.Close)
	return h
}

// double is a plugin block running the procvmm test double as plugin name.
func double(t *testing.T, name, config string) string {
	dir := bins.Dir(t, "boxctl-plugin-procvmm")
	return fmt.Sprintf("plugin %q {\n  path = %q\n  config {\n%s\n  }\n}\n", name, filepath.Join(dir, "boxctl-plugin-procvmm"), config)
}

func TestAutoPicksTheFirstUsableCandidate(t *testing.T) {
	ctx := context.Background()
	h := autoHost(t, double(t, "libkrun", `host_unusable = "KVM runs guest code 1000x too slowly (test double)"`)+double(t, "qemu", ""))
	c, err := h.ChooseVMM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", c.Summary())
	if !c.Auto || c.Name != "qemu" || c.Accelerator != "process" || len(c.Candidates) != 2 {
		t.Fatalf("choice %+v", c)
	}
	if k := c.Candidates[0]; k.Name != "libkrun" || k.Usable || !k.Checked || !strings.Contains(k.Reason, "1000x too slowly") {
		t.Errorf("libkrun candidate %+v", k)
	}
	if name, err := h.VMMName(ctx); err != nil || name != "qemu" {
		t.Errorf("VMMName: %q, %v", name, err)
	}
	if _, err := h.VMM(ctx); err != nil {
		t.Errorf("VMM: %v", err)
	}
	if !strings.HasPrefix(c.Summary(), "auto → qemu (process): libkrun: not usable: KVM runs") {
		t.Errorf("summary %q", c.Summary())
	}
}

func TestAutoWithoutALibkrunPluginPicksQEMU(t *testing.T) {
	ctx := context.Background()
	h := autoHost(t, double(t, "qemu", ""))
	c, err := h.ChooseVMM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "qemu" || len(c.Candidates) != 2 {
		t.Fatalf("choice %+v", c)
	}
	if k := c.Candidates[0]; k.Name != "libkrun" || k.Usable || k.Path != "" || !strings.Contains(k.Reason, "boxctl-plugin-libkrun") || !strings.Contains(k.Reason, "not found") {
		t.Errorf("libkrun candidate %+v", k)
	}
}

func TestAutoPrefersLibkrunWhenUsable(t *testing.T) {
	h := autoHost(t, double(t, "libkrun", "")+double(t, "qemu", ""))
	c, err := h.ChooseVMM(context.Background())
	if err != nil || c.Name != "libkrun" || len(c.Candidates) != 1 {
		t.Fatalf("choice %+v, %v; want libkrun, without asking qemu", c, err)
	}
	if starts, _ := h.Counts(); starts != 1 {
		t.Errorf("%d plugins started, want only libkrun", starts)
	}
}

func TestAutoWithNoUsableVMMSaysWhy(t *testing.T) {
	ctx := context.Background()
	h := autoHost(t, double(t, "qemu", `host_unusable = "qemu-system-x86_64 not found (test double)"`))
	_, err := h.VMMName(ctx)
	if !errors.Is(err, pluginhost.ErrNoUsableVMM) || !strings.Contains(err.Error(), "libkrun: plugin") || !strings.Contains(err.Error(), "qemu-system-x86_64 not found") {
		t.Fatalf("VMMName: %v", err)
	}
	if _, err := h.VMM(ctx); !errors.Is(err, pluginhost.ErrNoUsableVMM) {
		t.Errorf("VMM: %v", err)
	}
}

// A configured VMM is used without asking any other; ChooseVMM still
// reports its verdict (for boxctl info).
func TestConfiguredVMMIsNotChosen(t *testing.T) {
	h, _ := newHost(t, "")
	ctx := context.Background()
	if name, err := h.VMMName(ctx); err != nil || name != "procvmm" {
		t.Fatalf("VMMName: %q, %v", name, err)
	}
	if starts, _ := h.Counts(); starts != 0 {
		t.Errorf("VMMName of a configured VMM started %d plugins", starts)
	}
	c, err := h.ChooseVMM(ctx)
	if err != nil || c.Auto || c.Name != "procvmm" || len(c.Candidates) != 1 || !c.Candidates[0].Usable {
		t.Errorf("choice %+v, %v", c, err)
	}
}
