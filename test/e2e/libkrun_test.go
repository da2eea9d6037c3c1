package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boxctl/boxctl/test/images/busybox"
	"github.com/boxctl/boxctl/test/testbin"
)

// libkrunUsable says whether real libkrun VMs can run here: libkrun.so.1
// where the plugin looks by default, and a KVM that runs guests (the CPU
// advertising vmx or svm; a paravirtual nested KVM without them cannot).
func libkrunUsable() (bool, string) {
	found := ""
	if out, err := exec.Command("ldconfig", "-p").Output(); err == nil && strings.Contains(string(out), "libkrun.so.1 ") {
		found = "ld.so.cache"
	}
	for _, p := range []string{"/usr/lib64/libkrun.so.1", "/usr/local/lib64/libkrun.so.1", "/usr/local/lib/libkrun.so.1", "/usr/lib/x86_64-linux-gnu/libkrun.so.1", "/usr/lib/libkrun.so.1"} {
		if _, err := os.Stat(p); err == nil && found == "" {
			found = p
		}
	}
	if found == "" {
		return false, "libkrun.so.1 is not installed (see docs/libkrun.md)"
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false, "libkrun is installed but /dev/kvm cannot be opened: " + err.Error()
	}
	f.Close()
	cpuinfo, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(cpuinfo), "\n") {
		if strings.HasPrefix(line, "flags") {
			for _, fl := range strings.Fields(line) {
				if fl == "vmx" || fl == "svm" {
					return true, ""
				}
			}
			break
		}
	}
	return false, "libkrun is installed but KVM is not usable: the CPU advertises neither vmx nor svm"
}

// TestLibkrunBox boots real boxes with vmm = "libkrun": the boxctl guest
// kernel and agent under libkrun, the agent over the vsock-mapped socket.
func TestLibkrunBox(t *testing.T) {
	if ok, why := libkrunUsable(); !ok {
		t.Skip("vmm = \"libkrun\" e2e skipped: " + why)
	}
	root := testbin.ModuleRoot(t)
	guest := filepath.Join(root, "build", "guest")
	for _, f := range []string{"vmlinux", "initramfs"} {
		if _, err := os.Stat(filepath.Join(guest, f)); err != nil {
			t.Fatalf("guest %s missing (%v): run `make guest` to build the guest kernel and initramfs", f, err)
		}
	}
	bin := bins.Dir(t, "boxctl", "boxctl-plugin-libkrun", "boxctl-plugin-qcow2", "boxctl-plugin-oci")
	dir := testbin.ShortTempDir(t)
	layout := filepath.Join(dir, "img")
	if _, err := busybox.BuildLayout(layout, busybox.Options{}); err != nil {
		t.Fatalf("build the busybox image: %v", err)
	}
	e := &env{t: t, bin: bin, home: filepath.Join(dir, "h"), image: "oci-layout:" + layout, guest: guest}
	cfg := testbin.WriteFile(t, dir, "config.hcl", "vmm = \"libkrun\"\n")
	t.Cleanup(func() {
		_, _, _ = e.run(nil, "--config", cfg, "rm", "-a", "-f")
		_ = exec.Command("pkill", "-9", "-f", e.home).Run()
	})
	if out := strings.TrimSpace(e.ok("--config", cfg, "run", "--rm", e.image, "--", "echo", "hi from libkrun")); out != "hi from libkrun" {
		t.Errorf("run --rm: %q", out)
	}
	e.ok("--config", cfg, "run", "-d", "--name", "k", e.image)
	if out := strings.TrimSpace(e.ok("--config", cfg, "exec", "k", "--", "uname", "-s")); out != "Linux" {
		t.Errorf("exec uname -s: %q", out)
	}
	e.ok("--config", cfg, "stop", "k")
	if _, _, code := e.run(nil, "--config", cfg, "run", "--rm", e.image, "--", "sh", "-c", "exit 3"); code != 3 {
		t.Errorf("run --rm of a command exiting 3: exit %d", code)
	}
}
