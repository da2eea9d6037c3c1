package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boxctl/boxctl/test/images/busybox"
	"github.com/boxctl/boxctl/test/testbin"
)

// libkrunVerdict is the libkrun plugin's own verdict on this host, as
// `boxctl info` reports it: the library loads with every symbol boxctl
// needs, and KVM really runs a guest (the KVM probe).
func libkrunVerdict(t *testing.T, e *env, cfg string) (bool, string) {
	out := e.ok("--config", cfg, "info", "--format", "json")
	var info struct {
		VMM struct {
			Candidates []struct {
				Name   string `json:"name"`
				Usable bool   `json:"usable"`
				Reason string `json:"reason"`
			} `json:"candidates"`
		} `json:"vmm"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("boxctl info --format json: %v: %s", err, out)
	}
	for _, c := range info.VMM.Candidates {
		if c.Name == "libkrun" {
			return c.Usable, c.Reason
		}
	}
	t.Fatalf("boxctl info names no libkrun candidate: %s", out)
	return false, ""
}

// TestLibkrunBox boots real boxes with vmm = "libkrun": the boxctl guest
// kernel and agent under libkrun, the agent over the vsock-mapped socket.
func TestLibkrunBox(t *testing.T) {
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
	if ok, why := libkrunVerdict(t, e, cfg); !ok {
		t.Skip("vmm = \"libkrun\" e2e skipped: " + why)
	}
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
