package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/internal/kvmprobe"
	"github.com/boxctl/boxctl/test/libkrundouble"
	"github.com/boxctl/boxctl/test/testbin"
)

// newKrunEnv is an env whose VMM is the real libkrun plugin, configured
// with pluginConfig (the body of its config block).
func newKrunEnv(t *testing.T, pluginConfig string) *env {
	t.Helper()
	bin := bins.Dir(t, "boxctl", "boxctl-plugin-libkrun", "boxctl-plugin-oci", "boxctl-plugin-qcow2")
	home := testbin.ShortTempDir(t)
	cfg := testbin.WriteFile(t, home, "config.hcl", fmt.Sprintf("vmm = \"libkrun\"\nplugin \"libkrun\" {\n  config {\n%s\n  }\n}\n", pluginConfig))
	e := &env{t: t, bin: bin, home: filepath.Join(home, "h"), config: cfg}
	t.Cleanup(e.killAll)
	return e
}

// TestLibkrunThroughTheDouble runs boxes with vmm = "libkrun" end to end,
// the libkrun test double loaded in place of the library: run, exec, stop
// and a run --rm whose exit code is the command's, through the real
// plugin, its launcher and the box monitor. The double's call log shows
// that each VM was configured and entered.
func TestLibkrunThroughTheDouble(t *testing.T) {
	dir := testbin.ShortTempDir(t)
	lib := libkrundouble.Build(t, dir)
	guest := libkrundouble.BuildGuest(t, dir)
	kernel, initrd := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "initramfs")
	for _, p := range []string{kernel, initrd} {
		if err := os.WriteFile(p, []byte("not a kernel: the libkrun double runs no VM\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	callLog := filepath.Join(dir, "calls.jsonl")
	t.Setenv(libkrundouble.EnvGuest, guest)
	t.Setenv(libkrundouble.EnvLog, callLog)
	// kvm_probe = false: the double needs no KVM (this host's is too slow
	// for the probe, which would refuse the box at create).
	e := newKrunEnv(t, fmt.Sprintf("    kvm_probe = false\n    library = %q\n    kernel = %q\n    initrd = %q\n    pass_env = [%q, %q]",
		lib, kernel, initrd, libkrundouble.EnvGuest, libkrundouble.EnvLog))

	e.ok("run", "-d", "--name", "k", testImage)
	b := e.info(e.runtime(), "k")
	if b.Status != model.StatusRunning || !pidAlive(b.Run.VM.PID) {
		t.Fatalf("box k after run -d: %s", b.Status)
	}
	if out := strings.TrimSpace(e.ok("exec", "k", "--", "echo", "through libkrun")); out != "through libkrun" {
		t.Errorf("exec: %q", out)
	}
	stopped := time.Now()
	e.ok("stop", "k")
	if d := time.Since(stopped); d > 8*time.Second {
		t.Errorf("stop took %s: the graceful stop did not end the VM", d)
	}
	waitDead(t, b.Run.VM.PID, 10e9)
	if b := e.info(e.runtime(), "k"); b.Status == model.StatusRunning {
		t.Errorf("box k after stop: %s", b.Status)
	}
	if _, _, code := e.cli("run", "--rm", testImage, "--", "sh", "-c", "exit 3"); code != 3 {
		t.Errorf("run --rm of a command exiting 3: exit %d", code)
	}
	calls, err := libkrundouble.ReadCalls(callLog)
	if err != nil {
		t.Fatal(err)
	}
	var starts, disks int
	for _, c := range calls {
		switch c.Name() {
		case "krun_start_enter":
			starts++
		case "krun_add_disk2":
			disks++
		}
	}
	if starts != 2 || disks < 4 {
		t.Errorf("the double saw %d VMs entered and %d disks added; want 2 VMs of two disks each", starts, disks)
	}
	e.assertConsistent(e.runtime())
}

// TestLibkrunMissingFailsAtOnce: vmm = "libkrun" on a machine without
// libkrun fails the run with what to install, and leaves no box running.
func TestLibkrunMissingFailsAtOnce(t *testing.T) {
	for _, p := range []string{"/usr/lib64/libkrun.so.1", "/usr/lib/x86_64-linux-gnu/libkrun.so.1", "/usr/local/lib/libkrun.so.1", "/usr/lib/libkrun.so.1"} {
		if _, err := os.Stat(p); err == nil {
			t.Skipf("libkrun is installed here (%s): this test needs a machine without it", p)
		}
	}
	t.Setenv("LD_LIBRARY_PATH", "")
	e := newKrunEnv(t, "")
	_, errs, code := e.cli("run", "--rm", testImage, "--", "true")
	if code == 0 || !strings.Contains(errs, "libkrun") || !strings.Contains(errs, "libkrunfw") {
		t.Fatalf("run with vmm = \"libkrun\" and no libkrun: exit %d, stderr %q; want a failure saying what to install", code, errs)
	}
	t.Logf("boxctl run without libkrun: %s", strings.TrimSpace(errs))
	if !strings.Contains(errs, "cannot run VMs on this host") {
		t.Errorf("run without libkrun was not refused at create: %q", errs)
	}
	if out := strings.TrimSpace(e.ok("ls", "-a", "-q")); out != "" {
		t.Errorf("boxes left after the failed run: %q", out)
	}
	e.assertConsistent(e.runtime())
}

// TestLibkrunWithoutKVMRefusedAtCreate: a libkrun that loads on a host
// whose KVM cannot run guests (the KVM probe says so, as on an emulated
// KVM) is refused before a box is recorded, saying why.
func TestLibkrunWithoutKVMRefusedAtCreate(t *testing.T) {
	if r := kvmprobe.Probe(context.Background()); r.Usable {
		t.Skip("KVM runs guests here: this test needs a host whose KVM the probe refuses")
	}
	dir := testbin.ShortTempDir(t)
	lib := libkrundouble.Build(t, dir)
	e := newKrunEnv(t, fmt.Sprintf("    library = %q", lib))
	_, errs, code := e.cli("create", "--name", "k", testImage)
	if code == 0 || !strings.Contains(errs, "KVM not usable") || !strings.Contains(errs, "boxctl info") {
		t.Fatalf("create with libkrun and no usable KVM: exit %d, stderr %q", code, errs)
	}
	if out := strings.TrimSpace(e.ok("ls", "-a", "-q")); out != "" {
		t.Errorf("boxes left after the refused create: %q", out)
	}
}
