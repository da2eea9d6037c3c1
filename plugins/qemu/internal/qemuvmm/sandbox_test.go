package qemuvmm

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/boxctl/boxctl/sdk"
)

// searchableDir is a temporary directory others may enter.
func searchableDir(t *testing.T) string {
	t.Helper()
	dir := shortDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestReadableByFollowsModeBits(t *testing.T) {
	dir := searchableDir(t)
	f := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(f, []byte("k"), 0o644); err != nil {
		t.Fatal(err)
	}
	const uid = 0x7fff1234
	if err := readableBy(f, uid, uid, nil); err != nil {
		t.Fatalf("0644 file: %v", err)
	}
	if err := os.Chmod(f, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := readableBy(f, uid, uid, nil); err == nil || !strings.Contains(err.Error(), "mode 0600") {
		t.Fatalf("0600 file: %v", err)
	}
	if err := os.Chmod(f, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(f, 0, 4242); err == nil {
		if err := readableBy(f, uid, uid, []uint32{4242}); err != nil {
			t.Errorf("group-readable file, uid in the group: %v", err)
		}
		if err := readableBy(f, uid, uid, nil); err == nil {
			t.Error("group-readable file, uid not in the group: readable")
		}
	}
	if err := os.Chmod(f, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := readableBy(f, uid, uid, nil); err == nil || !strings.Contains(err.Error(), "directory "+dir) {
		t.Fatalf("file in a 0700 directory: %v", err)
	}
}

func TestKVMAccessForTheSandboxUser(t *testing.T) {
	dev := filepath.Join(t.TempDir(), "kvm")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dev, 0, 4242); err != nil {
		t.Skipf("chown: %v", err)
	}
	const uid = 0x7fff1234
	if _, ok, why := kvmAccess(dev, uid, uid); ok || !strings.Contains(why, "mode 0600") {
		t.Errorf("root-only device: ok=%v why=%q", ok, why)
	}
	_ = os.Chmod(dev, 0o660)
	if g, ok, _ := kvmAccess(dev, uid, uid); !ok || g != 4242 {
		t.Errorf("group device: group %d ok=%v, want 4242", g, ok)
	}
	_ = os.Chmod(dev, 0o666)
	if g, ok, _ := kvmAccess(dev, uid, uid); !ok || g != -1 {
		t.Errorf("world device: group %d ok=%v", g, ok)
	}
}

func TestPlanWithSandboxDisabledOrConfined(t *testing.T) {
	dir := searchableDir(t)
	guest := filepath.Join(dir, "guest")
	_ = os.MkdirAll(guest, 0o755)
	for _, f := range []string{"vmlinuz", "initramfs"} {
		if err := os.WriteFile(filepath.Join(guest, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	vmm := serve(t, filepath.Join(dir, "boxctl-plugin-qemu"))
	if err := configure(t, vmm, "\n  accel = \"tcg\"\n"); err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(dir, "run")
	_ = os.MkdirAll(run, 0o700)
	plan := func(sb sdk.Sandbox) (launchConfig, error) {
		p, err := vmm.Plan(context.Background(), sdk.VMSpec{BoxID: "b", VCPUs: 1, MemoryMiB: 128, RunDir: run, Sandbox: sb})
		if err != nil {
			return launchConfig{}, err
		}
		raw, err := os.ReadFile(p.Argv[2])
		if err != nil {
			t.Fatal(err)
		}
		var lc launchConfig
		if err := json.Unmarshal(raw, &lc); err != nil {
			t.Fatal(err)
		}
		return lc, nil
	}
	lc, err := plan(sdk.Sandbox{Disabled: true, UID: 0x70000001, GID: 0x70000001})
	if err != nil {
		t.Fatal(err)
	}
	if !lc.Jail.Disabled || lc.Jail.UID != 0 || strings.Contains(strings.Join(lc.Args, " "), "-sandbox") {
		t.Errorf("disabled sandbox: jail %+v, args %v", lc.Jail, lc.Args)
	}
	lc, err = plan(sdk.Sandbox{})
	if err != nil {
		t.Fatal(err)
	}
	if lc.Jail.Disabled || lc.Jail.UID != 0 || !strings.Contains(strings.Join(lc.Args, " "), "-sandbox "+sandboxArg) {
		t.Errorf("unprivileged sandbox: jail %+v, args %v", lc.Jail, lc.Args)
	}
	if os.Geteuid() != 0 {
		return
	}
	lc, err = plan(sdk.Sandbox{UID: 0x70000001, GID: 0x70000001, Cgroup: "/sys/fs/cgroup/boxctl/b"})
	if err != nil {
		t.Fatal(err)
	}
	if lc.Jail.UID != 0x70000001 || lc.Jail.GID != 0x70000001 || len(lc.Jail.Groups) != 0 || lc.Jail.Cgroup != "/sys/fs/cgroup/boxctl/b" {
		t.Errorf("confined: jail %+v", lc.Jail)
	}
	// A guest kernel the sandbox user cannot read is refused at plan time.
	if err := os.Chmod(filepath.Join(guest, "vmlinuz"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = plan(sdk.Sandbox{UID: 0x70000001, GID: 0x70000001})
	if !errors.Is(err, sdk.ErrInvalidState) || !strings.Contains(err.Error(), "vmlinuz") || !strings.Contains(err.Error(), "chmod o+r") {
		t.Errorf("unreadable kernel: %v", err)
	}
}

func TestLauncherRefusesSwappedDiskFiles(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(real, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := openDisk(fdSpec{Kind: fdDiskRO, Path: real, Format: "raw"})
	if err != nil {
		t.Fatalf("a regular file: %v", err)
	}
	f.Close()
	link := filepath.Join(dir, "link.raw")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if _, err := openDisk(fdSpec{Kind: fdDiskRO, Path: link, Format: "raw"}); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("a symbolic link: %v", err)
	}
	sub := filepath.Join(dir, "sub")
	if err := os.Symlink(dir, sub); err != nil {
		t.Fatal(err)
	}
	if _, err := openDisk(fdSpec{Kind: fdDiskRO, Path: filepath.Join(sub, "disk.raw"), Format: "raw"}); err == nil {
		t.Error("a path through a linked directory was opened")
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := openDisk(fdSpec{Kind: fdDiskRW, Path: fifo, Format: "raw"}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a FIFO: %v", err)
	}
	if _, err := openDisk(fdSpec{Kind: fdDiskRO, Path: real, Format: "qcow2"}); err == nil || !strings.Contains(err.Error(), "not a qcow2 file") {
		t.Errorf("raw content said to be qcow2: %v", err)
	}
	// A qcow2 v3 header with the external data file feature.
	q := make([]byte, 104)
	copy(q, "QFI\xfb")
	q[7] = 3
	q[79] = 1 << 2
	ext := filepath.Join(dir, "ext.qcow2")
	if err := os.WriteFile(ext, q, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := openDisk(fdSpec{Kind: fdDiskRO, Path: ext, Format: "qcow2"}); err == nil || !strings.Contains(err.Error(), "external data file") {
		t.Errorf("qcow2 with an external data file: %v", err)
	}
	q[79] = 0
	_ = os.WriteFile(ext, q, 0o600)
	if f, err := openDisk(fdSpec{Kind: fdDiskRO, Path: ext, Format: "qcow2"}); err != nil {
		t.Errorf("plain qcow2 header: %v", err)
	} else {
		f.Close()
	}
}

func TestStateMapping(t *testing.T) {
	for node, want := range map[string]string{"vdb": "vdb", "vdb-f": "vdb", "vdb-b2-f": "vdb", "": "fallback"} {
		if got := guestDevice(node, "fallback"); got != want {
			t.Errorf("guestDevice(%q) = %q, want %q", node, got, want)
		}
	}
	for status, want := range map[string]string{"running": stateRunning, "paused": statePaused, "io-error": stateIOError, "shutdown": stateShutdown, "internal-error": statePaused} {
		if got, _ := mapStatus(status); got != want {
			t.Errorf("mapStatus(%q) = %q, want %q", status, got, want)
		}
	}
	path := filepath.Join(t.TempDir(), "state.json")
	w := newStateWriter(path, nil)
	w.set(stateIOError, "no space left on device", "vdb")
	var st vmState
	b, _ := os.ReadFile(path)
	if err := json.Unmarshal(b, &st); err != nil || st.State != stateIOError || st.Reason != "no space left on device" || st.Device != "vdb" || st.At == "" {
		t.Fatalf("state file %s: %v", b, err)
	}
	w.exited()
	b, _ = os.ReadFile(path)
	if !strings.Contains(string(b), `"state":"shutdown"`) {
		t.Fatalf("after exit: %s", b)
	}
}
