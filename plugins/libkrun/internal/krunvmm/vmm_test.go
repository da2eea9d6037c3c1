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

	"github.com/boxctl/boxctl/internal/kvmprobe"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/test/libkrundouble"
)

func configured(t *testing.T, body string, opts ...Option) *VMM {
	t.Helper()
	v := New(hclog.NewNullLogger(), "/nonexistent/boxctl-plugin-libkrun", opts...)
	if err := v.Configure(context.Background(), &sdk.Config{Filename: "t.hcl", Body: []byte(body), BodyStart: hcl.InitialPos}); err != nil {
		t.Fatal(err)
	}
	return v
}

// kvm is a KVM probe answering r, counting its calls.
func kvm(r kvmprobe.Result, calls *int) Option {
	return WithKVMProbe(func(context.Context) kvmprobe.Result { *calls++; return r })
}

// TestCheckHost: usable with a library that has every symbol and a KVM
// that runs guests, with a note when boxes without network need a newer
// library; not usable, saying why, without the library or without KVM.
func TestCheckHost(t *testing.T) {
	ctx := context.Background()
	goodKVM := kvmprobe.Result{Usable: true, Reason: "KVM ran the test guest"}
	var calls int
	dir := t.TempDir()
	full := libkrundouble.Build(t, dir)
	v := configured(t, "library = \""+full+"\"", kvm(goodKVM, &calls))
	for i := 0; i < 2; i++ {
		if r, err := v.CheckHost(ctx); err != nil || !r.Usable || r.Accelerator != "kvm" || !strings.Contains(r.Reason, full) || !strings.Contains(r.Reason, goodKVM.Reason) {
			t.Errorf("CheckHost with a complete library and KVM: %+v %v", r, err)
		}
	}
	if calls != 1 {
		t.Errorf("the KVM probe ran %d times in one plugin process, want once", calls)
	}
	calls = 0
	noKVM := kvmprobe.Result{Reason: "KVM runs guest code 1000× too slowly"}
	if r, err := configured(t, "library = \""+full+"\"", kvm(noKVM, &calls)).CheckHost(ctx); err != nil || r.Usable || !strings.Contains(r.Reason, "KVM not usable ("+noKVM.Reason+")") {
		t.Errorf("CheckHost without a usable KVM: %+v %v", r, err)
	}
	calls = 0
	if r, err := configured(t, "kvm_probe = false\nlibrary = \""+full+"\"", kvm(noKVM, &calls)).CheckHost(ctx); err != nil || !r.Usable || !strings.Contains(r.Reason, "kvm_probe = false") || calls != 0 {
		t.Errorf("CheckHost with kvm_probe = false: %+v %v, probe ran %d times", r, err, calls)
	}
	old := t.TempDir()
	lib := libkrundouble.Build(t, old, "krun_disable_implicit_vsock")
	if r, _ := configured(t, "library = \""+lib+"\"", kvm(goodKVM, &calls)).CheckHost(ctx); !r.Usable || !strings.Contains(r.Reason, "krun_disable_implicit_vsock") || !strings.Contains(r.Reason, "1.17.0") {
		t.Errorf("CheckHost with a library lacking krun_disable_implicit_vsock: %+v", r)
	}
	calls = 0
	lacking := libkrundouble.Build(t, t.TempDir(), "krun_add_vsock_port2")
	if r, _ := configured(t, "library = \""+lacking+"\"", kvm(goodKVM, &calls)).CheckHost(ctx); r.Usable || !strings.Contains(r.Reason, "krun_add_vsock_port2") || !strings.Contains(r.Reason, "1.10.0") {
		t.Errorf("CheckHost with a library lacking krun_add_vsock_port2: %+v", r)
	}
	if calls != 0 {
		t.Errorf("the KVM probe ran although the library is unusable")
	}
	tsi := libkrundouble.Build(t, t.TempDir(), "krun_add_net_unixstream")
	if r, _ := configured(t, "library = \""+tsi+"\"", kvm(goodKVM, &calls)).CheckHost(ctx); !r.Usable || !strings.Contains(r.Reason, "krun_add_net_unixstream") || !strings.Contains(r.Reason, "TSI") {
		t.Errorf("CheckHost with a library lacking krun_add_net_unixstream: %+v", r)
	}
	if _, err := os.Stat("/usr/lib64/libkrun.so.1"); err != nil {
		t.Setenv("LD_LIBRARY_PATH", "")
		if r, _ := configured(t, "", kvm(goodKVM, &calls)).CheckHost(ctx); r.Usable || !strings.Contains(r.Reason, "libkrunfw") {
			t.Errorf("CheckHost without libkrun: %+v", r)
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
