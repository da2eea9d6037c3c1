package pluginhost_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core/pluginhost"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/test/testbin"
)

var bins testbin.Set

func TestMain(m *testing.M) {
	code := m.Run()
	bins.Cleanup()
	os.Exit(code)
}

// newHost writes an HCL config selecting procvmm as the VMM (plus extra
// HCL) and returns a Host for it, searching the built test binaries.
func newHost(t *testing.T, extra string) (*pluginhost.Host, *config.Config) {
	t.Helper()
	dir := bins.Dir(t, "boxctl-plugin-procvmm", "boxctl-plugin-badproto")
	home := testbin.ShortTempDir(t)
	file := testbin.WriteFile(t, home, "config.hcl", fmt.Sprintf("home = %q\nvmm = \"procvmm\"\n%s", home, extra))
	cfg, err := config.LoadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	h := pluginhost.New(cfg, pluginhost.WithSearchDirs(dir), pluginhost.WithLogger(hclog.NewNullLogger(), nil))
	t.Cleanup(h.Close)
	return h, cfg
}

func TestLazyStartAndCall(t *testing.T) {
	h, cfg := newHost(t, "")
	ctx := context.Background()
	vmm, err := h.VMM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := vmm.Plan(ctx, sdk.VMSpec{BoxID: "x", VCPUs: 1, MemoryMiB: 128, RunDir: cfg.Home})
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Argv) == 0 || !strings.HasSuffix(plan.Argv[0], "boxctl-plugin-procvmm") {
		t.Fatalf("unexpected plan argv %v", plan.Argv)
	}
	// A refusal by the plugin crosses the wire as a typed error.
	_, err = vmm.Plan(ctx, sdk.VMSpec{BoxID: "x", VCPUs: 1, MemoryMiB: 128})
	if !errors.Is(err, sdk.ErrInvalidArgument) || !strings.Contains(err.Error(), "RunDir") {
		t.Fatalf("empty run dir: got %v, want ErrInvalidArgument naming RunDir", err)
	}
}

func TestDescribeReportsRolesAndCapabilities(t *testing.T) {
	h, _ := newHost(t, "")
	info, roles, path, err := h.Describe(context.Background(), "procvmm")
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "procvmm" || len(roles) != 1 || roles[0] != sdk.RoleVMM || !strings.HasSuffix(path, "boxctl-plugin-procvmm") {
		t.Fatalf("describe: info=%v roles=%v path=%s", info, roles, path)
	}
	if len(info.ProtocolVersions) != 1 || info.ProtocolVersions[0] != sdk.ProtocolVersion {
		t.Fatalf("protocol versions %v", info.ProtocolVersions)
	}
}

func TestPluginCrashMidCall(t *testing.T) {
	h, cfg := newHost(t, `plugin "procvmm" {
  config {
    crash_on = "Plan"
  }
}`)
	ctx := context.Background()
	vmm, err := h.VMM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = vmm.Plan(ctx, sdk.VMSpec{BoxID: "x", RunDir: cfg.Home})
	var ce *pluginhost.CallError
	if !errors.As(err, &ce) || !errors.Is(err, pluginhost.ErrPluginCrashed) {
		t.Fatalf("got %v, want a crash CallError", err)
	}
	msg := err.Error()
	for _, want := range []string{`plugin "procvmm"`, "crashed during Plan", "crashing on purpose", "exit status 3"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	// The next request starts a fresh plugin process.
	vmm, err = h.VMM(ctx)
	if err != nil {
		t.Fatalf("restart after crash: %v", err)
	}
	if _, err := vmm.Metrics(ctx, sdk.VM{PID: os.Getpid()}); err != nil {
		t.Fatalf("call after restart: %v", err)
	}
}

func TestPluginHangIsBounded(t *testing.T) {
	h, cfg := newHost(t, `plugin "procvmm" {
  call_timeout = "1s"
  config {
    hang_on = "Plan"
  }
}`)
	ctx := context.Background()
	vmm, err := h.VMM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := vmm.Plan(ctx, sdk.VMSpec{BoxID: "x", RunDir: cfg.Home})
		done <- err
	}()
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("a hung plugin call did not return: the bound does not work")
	}
	if !errors.Is(err, pluginhost.ErrPluginHung) {
		t.Fatalf("got %v, want ErrPluginHung", err)
	}
	for _, want := range []string{"did not answer Plan within 1s", "hanging on purpose"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestWrongChecksumRefusesToStart(t *testing.T) {
	h, cfg := newHost(t, `plugin "procvmm" {
  sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
}`)
	_, err := h.VMM(context.Background())
	if !errors.Is(err, pluginhost.ErrChecksumMismatch) {
		t.Fatalf("got %v, want ErrChecksumMismatch", err)
	}
	for _, want := range []string{cfg.File + ":4:12", "has sha256", "was not started"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestRightChecksumStarts(t *testing.T) {
	dir := bins.Dir(t, "boxctl-plugin-procvmm")
	sum := sha256File(t, dir+"/boxctl-plugin-procvmm")
	h, _ := newHost(t, fmt.Sprintf("plugin \"procvmm\" {\n  sha256 = %q\n}\n", sum))
	if _, err := h.VMM(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestUnsupportedProtocolVersion(t *testing.T) {
	dir := bins.Dir(t, "boxctl-plugin-badproto")
	home := testbin.ShortTempDir(t)
	cfg, err := config.Parse([]byte(fmt.Sprintf("home = %q\nvmm = \"badproto\"\n", home)), "bad.hcl")
	if err != nil {
		t.Fatal(err)
	}
	h2 := pluginhost.New(cfg, pluginhost.WithSearchDirs(dir))
	defer h2.Close()
	_, err = h2.VMM(context.Background())
	if !errors.Is(err, pluginhost.ErrProtocolMismatch) {
		t.Fatalf("got %v, want ErrProtocolMismatch", err)
	}
	if !strings.Contains(err.Error(), "badproto") || !strings.Contains(err.Error(), "protocol 1") {
		t.Errorf("error %q should name the plugin and our protocol", err)
	}
}

func TestMissingBinary(t *testing.T) {
	h, _ := newHost(t, `images = "nosuch"`)
	_, err := h.Images(context.Background())
	if !errors.Is(err, pluginhost.ErrPluginNotFound) || !strings.Contains(err.Error(), "boxctl-plugin-nosuch") || !strings.Contains(err.Error(), "make build") {
		t.Fatalf("got %v", err)
	}
	h2, cfg := newHost(t, "plugin \"procvmm\" {\n  path = \"/nonexistent/boxctl-plugin-procvmm\"\n}\n")
	_, err = h2.VMM(context.Background())
	if !errors.Is(err, pluginhost.ErrPluginNotFound) || !strings.Contains(err.Error(), cfg.File+":4:10") {
		t.Fatalf("configured path missing: got %v", err)
	}
}

func TestPluginRejectsItsConfigWithFilePosition(t *testing.T) {
	h, cfg := newHost(t, `plugin "procvmm" {
  config {
    crash_onn = "Plan"
  }
}`)
	_, err := h.VMM(context.Background())
	var ce *pluginhost.ConfigureError
	if !errors.As(err, &ce) {
		t.Fatalf("got %v, want ConfigureError", err)
	}
	for _, want := range []string{cfg.File + ":5:5", "crash_onn", `Did you mean "crash_on"?`, "5 |     crash_onn"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestRoleNotServed(t *testing.T) {
	h, _ := newHost(t, `storage = "procvmm"`)
	_, err := h.Disks(context.Background())
	if err == nil || !strings.Contains(err.Error(), "does not serve the DiskBackend role") {
		t.Fatalf("got %v", err)
	}
}

// Ready reports every role whose plugin cannot serve, and nothing when all
// can; the plugins it started serve the calls that follow.
func TestReady(t *testing.T) {
	ctx := context.Background()
	h, _ := newHost(t, "images = \"nosuch\"\n")
	if err := h.Ready(ctx, sdk.RoleVMM); err != nil {
		t.Fatalf("ready with a good vmm: %v", err)
	}
	err := h.Ready(ctx, sdk.RoleVMM, sdk.RoleImages)
	if !errors.Is(err, pluginhost.ErrPluginNotFound) || !strings.Contains(err.Error(), `plugin "nosuch"`) {
		t.Fatalf("ready with a missing images plugin: %v", err)
	}
	vmm, err := h.VMM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vmm.Info(ctx); err != nil {
		t.Fatalf("vmm after Ready: %v", err)
	}

	bad, _ := newHost(t, "plugin \"procvmm\" {\n  config {\n    hang_onn = \"x\"\n  }\n}\n")
	var ce *pluginhost.ConfigureError
	if err := bad.Ready(ctx, sdk.RoleVMM); !errors.As(err, &ce) {
		t.Fatalf("ready with a rejected config block: %v, want a ConfigureError", err)
	}
}
