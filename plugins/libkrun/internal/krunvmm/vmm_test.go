package krunvmm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/hcl/v2"

	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/test/libkrundouble"
)

func configured(t *testing.T, body string) *VMM {
	t.Helper()
	v := New(hclog.NewNullLogger(), "/nonexistent/boxctl-plugin-libkrun")
	if err := v.Configure(context.Background(), &sdk.Config{Filename: "t.hcl", Body: []byte(body), BodyStart: hcl.InitialPos}); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestCheckHost: usable with a library that has every symbol, with a note
// when boxes without network need a newer one, and not usable, saying
// why, without one.
func TestCheckHost(t *testing.T) {
	dir := t.TempDir()
	full := libkrundouble.Build(t, dir)
	if ok, accel, why := configured(t, "library = \""+full+"\"").checkHost(context.Background()); !ok || accel == "" || !strings.Contains(why, full) {
		t.Errorf("checkHost with a complete library: %v %q %q", ok, accel, why)
	}
	old := t.TempDir()
	lib := libkrundouble.Build(t, old, "krun_disable_implicit_vsock")
	if ok, _, why := configured(t, "library = \""+lib+"\"").checkHost(context.Background()); !ok || !strings.Contains(why, "krun_disable_implicit_vsock") || !strings.Contains(why, "1.17.0") {
		t.Errorf("checkHost with a library lacking krun_disable_implicit_vsock: %v %q", ok, why)
	}
	lacking := libkrundouble.Build(t, t.TempDir(), "krun_add_vsock_port2")
	if ok, _, why := configured(t, "library = \""+lacking+"\"").checkHost(context.Background()); ok || !strings.Contains(why, "krun_add_vsock_port2") || !strings.Contains(why, "1.10.0") {
		t.Errorf("checkHost with a library lacking krun_add_vsock_port2: %v %q", ok, why)
	}
	tsi := libkrundouble.Build(t, t.TempDir(), "krun_add_net_unixstream")
	if ok, _, why := configured(t, "library = \""+tsi+"\"").checkHost(context.Background()); !ok || !strings.Contains(why, "krun_add_net_unixstream") || !strings.Contains(why, "TSI") {
		t.Errorf("checkHost with a library lacking krun_add_net_unixstream: %v %q", ok, why)
	}
	if _, err := os.Stat("/usr/lib64/libkrun.so.1"); err != nil {
		t.Setenv("LD_LIBRARY_PATH", "")
		if ok, _, why := configured(t, "").checkHost(context.Background()); ok || !strings.Contains(why, "libkrunfw") {
			t.Errorf("checkHost without libkrun: %v %q", ok, why)
		}
	}
}

// TestQcow2Backing reads the backing name and recorded format qemu-img
// writes.
func TestQcow2Backing(t *testing.T) {
	dir := t.TempDir()
	base, top := filepath.Join(dir, "base.raw"), filepath.Join(dir, "top.qcow2")
	if err := os.WriteFile(base, make([]byte, 1<<16), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", top).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	name, format, err := qcow2Backing(top)
	if err != nil || name != "base.raw" || format != "raw" {
		t.Fatalf("qcow2Backing: %q %q %v", name, format, err)
	}
	d := sdk.DiskSpec{Path: top, Format: "qcow2", BackingChain: []sdk.ChainFile{{Path: base, Format: "raw"}}}
	if err := checkDisk(1, d); err != nil {
		t.Errorf("checkDisk of a chain matching the file's relative name: %v", err)
	}
	d.BackingChain[0].Format = "qcow2"
	if err := checkDisk(1, d); err == nil || !strings.Contains(err.Error(), "spec.Disks[1]") {
		t.Errorf("checkDisk with the wrong chain format: %v", err)
	}
	if _, _, err := qcow2Backing(base); err == nil {
		t.Error("qcow2Backing of a raw file succeeded")
	}
}
