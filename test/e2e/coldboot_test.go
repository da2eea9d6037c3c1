package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A box boots the uncompressed kernel (vmlinux, through its PVH entry point) that `make
// guest` extracts next to the bzImage, and the plugin's kernel setting still picks the
// bzImage: both boot and run the image's commands.
func TestRunBootsThePVHKernel(t *testing.T) {
	e := newEnv(t)
	vmlinux := filepath.Join(e.guest, "vmlinux")
	if _, err := os.Stat(vmlinux); err != nil {
		t.Fatalf("%v: run `make guest` (guest/build.sh extracts vmlinux from Debian's kernel)", err)
	}
	bz := filepath.Join(t.TempDir(), "bzimage.hcl")
	hcl := fmt.Sprintf("plugin \"qemu\" {\n  config {\n    kernel = %q\n  }\n}\n", filepath.Join(e.guest, "vmlinuz"))
	if err := os.WriteFile(bz, []byte(hcl), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		config []string
		kernel string
	}{
		{"pvh", nil, vmlinux},
		{"bz", []string{"--config", bz}, filepath.Join(e.guest, "vmlinuz")},
	} {
		e.ok(append(c.config, "run", "-d", "--name", c.name, e.image)...)
		if got := launchKernel(t, e.boxDir(c.name)); got != c.kernel {
			t.Errorf("box %s booted %s, want %s", c.name, got, c.kernel)
		}
		if out := e.ok(append(c.config, "exec", c.name, "cat", "/proc/cmdline")...); !strings.Contains(out, "boxctl.root=vda") {
			t.Errorf("box %s: /proc/cmdline = %q", c.name, out)
		}
		e.ok(append(c.config, "rm", "-f", c.name)...)
	}
}

// launchKernel returns the -kernel argument of the QEMU launch config under a box's
// directory.
func launchKernel(t *testing.T, boxDir string) string {
	t.Helper()
	var found []string
	filepath.WalkDir(boxDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Name() == "qemu-launch.json" {
			found = append(found, p)
		}
		return nil
	})
	if len(found) != 1 {
		t.Fatalf("qemu-launch.json under %s: %v", boxDir, found)
	}
	raw, err := os.ReadFile(found[0])
	if err != nil {
		t.Fatal(err)
	}
	var lc struct{ Args []string }
	if err := json.Unmarshal(raw, &lc); err != nil {
		t.Fatal(err)
	}
	for i, a := range lc.Args {
		if a == "-kernel" && i+1 < len(lc.Args) {
			return lc.Args[i+1]
		}
	}
	t.Fatalf("no -kernel in %s", found[0])
	return ""
}
