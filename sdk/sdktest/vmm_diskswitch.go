package sdktest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/boxctl/boxctl/sdk"
)

// diskSwitched is what the DiskSwitch check did to the shared VM's
// writable disk, for DiskSwitchAfterStop.
type diskSwitched struct {
	disk    sdk.DiskSpec // as switched: Path the new overlay, BackingChain[0] the base
	backing string       // the backing-file name the overlay's header was written with
	baseSum string       // the base's SHA-256 right after SwitchDisk
	copy    string       // the old file as it was when the VM was paused
	wrote   bool         // the guest wrote a file after the switch (WithGuestWrites)
}

// Files the guest writes before and after the switch (WithGuestWrites),
// 1 MiB each.
const (
	beforeSwitchFile = "/sdktest-before-switch"
	afterSwitchFile  = "/sdktest-after-switch"
)

var (
	beforeSwitchData = bytes.Repeat([]byte("before the switch\n"), 1<<20/18)
	afterSwitchData  = bytes.Repeat([]byte("after the switch!\n"), 1<<20/18)
)

// checkDiskSwitch does what the core's quiesce bracket does to a running
// box for an O(1) snapshot, on the shared VM's writable disk: pause, the
// storage plugin's step (rename the disk's file into a base, create a new
// empty qcow2 overlay over it where the file was, naming it relatively),
// SwitchDisk, resume. It holds the plugin to vmm.proto: refused while the VM
// runs (FAILED_PRECONDITION), for a disk the VM lacks, a read-only disk and a
// first backing file that is not the VM's (INVALID_ARGUMENT), each refusal
// leaving the overlay untouched; a second SwitchDisk with the same disk
// succeeds and changes nothing; after the switch the VM keeps running, the
// overlay's header still names the base as written and the chain is the
// caller's, and with WithGuestWrites what the guest writes after the switch
// is in the overlay while the base reads as the disk did at the pause.
func checkDiskSwitch(e *vmmEnv) {
	t := e.t
	d, ok := e.vmm.(sdk.DiskSwitcher)
	if !ok {
		t.Fatal("the plugin declares disk-switch, but its client is no sdk.DiskSwitcher")
	}
	p, ok := e.vmm.(sdk.Pauser)
	if !ok || !e.info.Capabilities.Pause {
		t.Fatal("the plugin declares disk-switch but not pause: a VM is switched only while paused")
	}
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatal("the DiskSwitch check makes qcow2 overlays with qemu-img, which is not installed (Debian: qemu-utils)")
	}
	idx, old, ok := writableDisk(e.spec)
	if !ok {
		t.Fatalf("the suite's disks (WithDisks) have no writable disk to switch: %+v", e.spec.Disks)
	}
	if e.vm.exited() {
		t.Fatalf("the shared VM exited before the check: %v", e.vm.err)
	}
	dir := filepath.Dir(old.Path)
	size := virtualSize(t, old.Path, old.Format)
	chainOf := func(path string) sdk.DiskSpec {
		return sdk.DiskSpec{Path: path, Format: "qcow2", Role: old.Role,
			BackingChain: append([]sdk.ChainFile{{Path: old.Path, Format: old.Format}}, old.BackingChain...)}
	}

	// A valid request, but the VM runs.
	probe := filepath.Join(dir, "sdktest-probe.qcow2")
	makeOverlay(t, probe, filepath.Base(old.Path), old.Format, size)
	sum := fileSum(t, probe)
	if err := d.SwitchDisk(e.ctx, e.ref(), idx, chainOf(probe)); !errors.Is(err, sdk.ErrInvalidState) {
		t.Errorf("SwitchDisk of a running VM: %v; want sdk.ErrInvalidState (FAILED_PRECONDITION): a VM is switched only while paused", err)
	}
	if fileSum(t, probe) != sum {
		t.Error("a refused SwitchDisk changed the overlay it was given")
	}
	if err := os.Remove(probe); err != nil {
		t.Error(err)
	}
	if e.s.write != nil {
		if err := e.s.write(e.ctx, e.plan.AgentSocket, beforeSwitchFile, beforeSwitchData); err != nil {
			t.Fatalf("the guest's write before the switch: %v", err)
		}
	}

	if err := p.Pause(e.ctx, e.ref()); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			if err := p.Resume(e.ctx, e.ref()); err != nil {
				t.Errorf("Resume after the switch: %v", err)
			}
		}
	}
	defer resume()
	copied := filepath.Join(dir, "sdktest-copy-"+filepath.Base(old.Path))
	copySparse(t, copied, old.Path)

	// The storage plugin's step: the file becomes a read-only base, a new
	// overlay over it takes its place.
	base := filepath.Join(dir, "sdktest-base-"+filepath.Base(old.Path))
	mode := fileMode(t, old.Path)
	if err := os.Rename(old.Path, base); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o444); err != nil {
		t.Fatal(err)
	}
	backing := filepath.Base(base)
	makeOverlay(t, old.Path, backing, old.Format, size)
	disk := sdk.DiskSpec{Path: old.Path, Format: "qcow2", Role: old.Role,
		BackingChain: append([]sdk.ChainFile{{Path: base, Format: old.Format}}, old.BackingChain...)}
	undo := func() {
		// What the core does when the switch fails: the VM goes on with
		// its old file, under its old name.
		if err := os.Remove(old.Path); err != nil {
			t.Error(err)
		}
		if err := os.Rename(base, old.Path); err != nil {
			t.Error(err)
		}
		if err := os.Chmod(old.Path, mode); err != nil {
			t.Error(err)
		}
	}
	sum = fileSum(t, disk.Path)
	refusals := []struct {
		what  string
		index int
		disk  sdk.DiskSpec
	}{
		{"a disk the VM does not have", len(e.spec.Disks), disk},
		{"a first backing file that is not the VM's file (a copy of it)", idx, func() sdk.DiskSpec {
			d := disk
			d.BackingChain = append([]sdk.ChainFile{{Path: copied, Format: old.Format}}, disk.BackingChain[1:]...)
			return d
		}()},
	}
	for i, sd := range e.spec.Disks {
		if sd.ReadOnly {
			refusals = append(refusals, struct {
				what  string
				index int
				disk  sdk.DiskSpec
			}{"a read-only disk", i, disk})
			break
		}
	}
	for _, r := range refusals {
		if err := d.SwitchDisk(e.ctx, e.ref(), r.index, r.disk); !errors.Is(err, sdk.ErrInvalidArgument) {
			t.Errorf("SwitchDisk(index %d) of %s: %v; want sdk.ErrInvalidArgument", r.index, r.what, err)
		}
	}
	if fileSum(t, disk.Path) != sum {
		t.Error("a refused SwitchDisk changed the overlay it was given")
	}

	started := time.Now()
	err := d.SwitchDisk(e.ctx, e.ref(), idx, disk)
	took := time.Since(started)
	if err != nil {
		undo()
		t.Fatalf("SwitchDisk(%d, %+v) of the paused VM: %v", idx, disk, err)
	}
	t.Logf("SwitchDisk took %s", took.Round(time.Microsecond))
	sw := &diskSwitched{disk: disk, backing: backing, baseSum: fileSum(t, base), copy: copied}
	// The caller retries after an error it cannot tell the outcome of.
	if err := d.SwitchDisk(e.ctx, e.ref(), idx, disk); err != nil {
		t.Errorf("SwitchDisk again with the same disk (a retry): %v; want success, changing nothing", err)
	}
	e.s.mu.Lock()
	e.s.switched = sw
	e.s.mu.Unlock()
	checkSwitchedChain(t, sw, true)
	resume()

	// The VM goes on, on the new overlay.
	if e.s.wait != nil {
		ctx, cancel := context.WithTimeout(e.ctx, e.s.bootTimeout)
		defer cancel()
		if err := waitGuest(ctx, e.s.wait, e.plan.AgentSocket, e.vm); err != nil {
			t.Fatalf("the guest agent after the switch: %v", err)
		}
	} else if e.vm.waitExit(time.Second) {
		t.Fatalf("the VM exited after the switch: %v", e.vm.err)
	}
	if e.s.write == nil {
		return
	}
	if err := e.s.write(e.ctx, e.plan.AgentSocket, afterSwitchFile, afterSwitchData); err != nil {
		t.Fatalf("the guest's write after the switch: %v", err)
	}
	sw.wrote = true
	// Look at the files while the VM stands still.
	if err := p.Pause(e.ctx, e.ref()); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	defer func() {
		if err := p.Resume(e.ctx, e.ref()); err != nil {
			t.Errorf("Resume: %v", err)
		}
	}()
	checkSwitchedData(t, sw, true)
}

// checkDiskSwitchAfterStop looks at what DiskSwitch left once the VM has
// stopped (HandleFromAFreshPluginProcess stops it; the check stops it
// itself when that did not run): the overlay is a valid qcow2 whose header
// still names the base as written, the chain is the caller's, the base was
// not written after the switch, and with WithGuestWrites the data written
// after the switch is in the overlay.
func checkDiskSwitchAfterStop(e *vmmEnv) {
	t := e.t
	e.s.mu.Lock()
	sw := e.s.switched
	e.s.mu.Unlock()
	if sw == nil {
		t.Skip("DiskSwitch did not switch the shared VM's disk (it failed or did not run)")
	}
	if !e.vm.exited() {
		if err := e.vmm.Stop(e.ctx, e.ref(), true); err != nil {
			t.Fatalf("Stop(force=true): %v", err)
		}
		if !e.vm.waitExit(time.Minute) {
			t.Fatal("the VM process still runs a minute after Stop(force=true)")
		}
	}
	if out, err := exec.Command("qemu-img", "check", "-f", "qcow2", sw.disk.Path).CombinedOutput(); err != nil {
		t.Errorf("qemu-img check of the new overlay %s after the VM stopped: %v: %s", sw.disk.Path, err, out)
	}
	checkSwitchedChain(t, sw, false)
	if sw.wrote {
		checkSwitchedData(t, sw, false)
	}
}

// checkSwitchedChain checks the overlay's chain as qemu-img sees it
// (shared: while the VM has the files open): the files of the caller's
// chain, in order, the overlay's header naming the base as it was written,
// and the base exactly as it was when SwitchDisk returned.
func checkSwitchedChain(t *testing.T, sw *diskSwitched, shared bool) {
	t.Helper()
	chain := imageChain(t, sw.disk.Path, shared)
	want := []string{sw.disk.Path}
	for _, c := range sw.disk.BackingChain {
		want = append(want, c.Path)
	}
	var got []string
	for _, c := range chain {
		got = append(got, filepath.Clean(c.Filename))
	}
	if !slices.Equal(got, want) {
		t.Errorf("qemu-img info --backing-chain of the new overlay: %q; want the chain SwitchDisk was given, %q", got, want)
	}
	if len(chain) > 0 && chain[0].BackingFilename != sw.backing {
		t.Errorf("the new overlay's header names %q as its backing file; it was written with %q (the VMM must not rewrite it)", chain[0].BackingFilename, sw.backing)
	}
	if fileSum(t, sw.disk.BackingChain[0].Path) != sw.baseSum {
		t.Errorf("the base %s changed after SwitchDisk: the VM must never write the file it switched away from", sw.disk.BackingChain[0].Path)
	}
}

// checkSwitchedData checks where the guest's writes went: the base reads as
// the disk did when the VM was paused for the switch, and the overlay holds
// data of its own.
func checkSwitchedData(t *testing.T, sw *diskSwitched, shared bool) {
	t.Helper()
	base := sw.disk.BackingChain[0]
	args := []string{"compare", "-f", base.Format, "-F", base.Format}
	if shared {
		args = append(args, "-U")
	}
	if out, err := exec.Command("qemu-img", append(args, sw.copy, base.Path)...).CombinedOutput(); err != nil {
		t.Errorf("qemu-img compare of the base with the disk at the pause: %v: %s (the guest's writes after the switch must not reach the base)", err, out)
	}
	args = []string{"map", "--output=json", "-f", "qcow2"}
	if shared {
		args = append(args, "-U")
	}
	out, err := exec.Command("qemu-img", append(args, sw.disk.Path)...).Output()
	if err != nil {
		t.Fatalf("qemu-img map %s: %v", sw.disk.Path, err)
	}
	var extents []struct {
		Length int64 `json:"length"`
		Depth  int   `json:"depth"`
		Data   bool  `json:"data"`
	}
	if err := json.Unmarshal(out, &extents); err != nil {
		t.Fatalf("qemu-img map %s: %v: %s", sw.disk.Path, err, out)
	}
	var own int64
	for _, x := range extents {
		if x.Depth == 0 && x.Data {
			own += x.Length
		}
	}
	if own < int64(len(afterSwitchData)) {
		t.Errorf("the new overlay holds %d bytes of data of its own after the guest wrote %d bytes to %s: the guest's writes after the switch must land in it", own, len(afterSwitchData), afterSwitchFile)
	}
}

// writableDisk is the spec's first writable disk.
func writableDisk(spec sdk.VMSpec) (int, sdk.DiskSpec, bool) {
	for i, d := range spec.Disks {
		if d.Role == sdk.DiskRoleWritable && !d.ReadOnly {
			return i, d, true
		}
	}
	return 0, sdk.DiskSpec{}, false
}

type imageInfo struct {
	Filename        string `json:"filename"`
	VirtualSize     uint64 `json:"virtual-size"`
	BackingFilename string `json:"backing-filename"`
}

func imageChain(t *testing.T, path string, shared bool) []imageInfo {
	t.Helper()
	args := []string{"info", "--backing-chain", "--output=json"}
	if shared {
		args = append(args, "-U")
	}
	out, err := exec.Command("qemu-img", append(args, path)...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img info --backing-chain %s: %v: %s", path, err, out)
	}
	var chain []imageInfo
	if err := json.Unmarshal(out, &chain); err != nil {
		t.Fatalf("qemu-img info --backing-chain %s: %v: %s", path, err, out)
	}
	return chain
}

// virtualSize reads a disk file's size as the guest sees it (the VM has it
// open: shared).
func virtualSize(t *testing.T, path, format string) uint64 {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "-U", "--output=json", "-f", format, path).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v: %s", path, err, out)
	}
	var info imageInfo
	if err := json.Unmarshal(out, &info); err != nil || info.VirtualSize == 0 {
		t.Fatalf("qemu-img info %s: %v: %s", path, err, out)
	}
	return info.VirtualSize
}

// makeOverlay creates an empty qcow2 overlay at path over backing (a name
// relative to path's directory, as the storage plugin writes it), without
// opening the backing file (the VM has it open).
func makeOverlay(t *testing.T, path, backing, format string, size uint64) {
	t.Helper()
	out, err := exec.Command("qemu-img", "create", "-q", "-u", "-f", "qcow2", "-b", backing, "-F", format, path, fmt.Sprint(size)).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img create %s over %s: %v: %s", path, backing, err, out)
	}
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

// copySparse copies src to dst, leaving runs of zeros as holes.
func copySparse(t *testing.T, dst, src string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	buf := make([]byte, 64<<10)
	var off int64
	for {
		n, err := io.ReadFull(in, buf)
		if n > 0 && !allZero(buf[:n]) {
			if _, err := out.WriteAt(buf[:n], off); err != nil {
				t.Fatal(err)
			}
		}
		off += int64(n)
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := out.Truncate(off); err != nil {
		t.Fatal(err)
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
