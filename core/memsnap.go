package core

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/sdk"
)

// Memory snapshots: the VMM saves a paused VM's memory and devices to a
// file (sdk.MemorySnapshotter) while the core takes the disks' state at the
// same instant; a VM started from the file and those disks continues where
// the saved one was. Checkpoints, suspend, fork and boot templates are
// built from that (checkpoints.go, suspend.go, fork.go, templates.go).

// vmStateDir holds box id's saved VM states; templateDir the boot
// templates'. Both are removed with what owns them.
func (l layout) vmStateDir(id string) string { return filepath.Join(l.home, "vmstate", id) }
func (l layout) templateDir() string         { return filepath.Join(l.home, "vmstate", "templates") }

// memorySnapshotter returns the VMM's memory snapshots, or an error saying
// that this VMM cannot do what.
func (r *Runtime) memorySnapshotter(ctx context.Context, b *model.Box, what string) (boxVMM, error) {
	vmm, err := r.vmmOf(ctx, b)
	if err != nil {
		return boxVMM{}, err
	}
	if !vmm.info.Capabilities.MemorySnapshot {
		return boxVMM{}, fmt.Errorf("%s: the VMM plugin %q cannot save a VM's memory (it lacks the memory-snapshot capability): %w", what, vmm.name, ErrUnsupported)
	}
	return vmm, nil
}

// stateFileName is a new file name in dir for a state saved under name:
// unique, so a save that dies half-way never collides with a later one,
// and recognisable by its prefix when unreferenced files are swept.
func stateFileName(dir, name string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return filepath.Join(dir, fmt.Sprintf("%s.%x.vmstate", name, b))
}

// saveState has the VMM save paused vm's state into a new file in dir. The
// file is not yet checksummed or synced: sealState does that once the VM
// runs again. On error no file is left.
func (r *Runtime) saveState(ctx context.Context, ms boxVMM, vm sdk.VM, dir, name string) (model.VMState, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return model.VMState{}, fmt.Errorf("state directory: %w", err)
	}
	path := stateFileName(dir, name)
	saved, err := ms.SaveState(ctx, vm, path)
	if err != nil {
		_ = os.Remove(path)
		return model.VMState{}, fmt.Errorf("save the VM's memory: %w", err)
	}
	return model.VMState{File: path, Size: saved.Size, VMM: ms.name, Inputs: saved.Inputs}, nil
}

// sealState makes a saved state's file durable and records its checksum,
// reading it once for both: outside the pause, since it reads and syncs
// the whole file. The file must have the size the VMM reported.
func sealState(st *model.VMState) error {
	f, err := os.Open(st.File)
	if err != nil {
		return fmt.Errorf("seal the saved memory: %w", err)
	}
	defer f.Close()
	h := crc32.New(castagnoli)
	n, err := io.CopyBuffer(h, f, make([]byte, 1<<20))
	if err != nil {
		return fmt.Errorf("seal the saved memory: read %s: %w", st.File, err)
	}
	if n != st.Size {
		return fmt.Errorf("seal the saved memory: the VMM reported %d bytes but %s has %d", st.Size, st.File, n)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("seal the saved memory: sync %s: %w", st.File, err)
	}
	if d, err := os.Open(filepath.Dir(st.File)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	st.CRC32C = h.Sum32()
	return nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func checksumFile(path string) (uint32, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	h := crc32.New(castagnoli)
	n, err := io.CopyBuffer(h, f, make([]byte, 1<<20))
	if err != nil {
		return 0, 0, fmt.Errorf("read %s: %w", path, err)
	}
	return h.Sum32(), n, nil
}

// errDamagedState: a saved state's file is not what was saved.
var errDamagedState = errors.New("the saved VM state is damaged")

// verifyState checks that st's file is the one saved (checkState, and its
// checksum).
func (r *Runtime) verifyState(st model.VMState, vmm string) error {
	if err := r.checkState(st, vmm); err != nil {
		return err
	}
	return verifyChecksum(st)
}

// checkState is what verifyState checks without reading the file: that it
// was saved by vmm (the VMM plugin of the box it is for), exists, and has
// the size saved.
func (r *Runtime) checkState(st model.VMState, vmm string) error {
	if st.VMM != vmm {
		return fmt.Errorf("it was saved by the VMM plugin %q, and the box runs on %q: %w", st.VMM, vmm, ErrInvalidState)
	}
	fi, err := os.Stat(st.File)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("its state file %s is missing: %w", st.File, errDamagedState)
	case err != nil:
		return fmt.Errorf("%w: %w", errDamagedState, err)
	case fi.Size() != st.Size:
		return fmt.Errorf("its state file %s has %d bytes, %d were saved (truncated?): %w", st.File, fi.Size(), st.Size, errDamagedState)
	}
	return nil
}

// verifyChecksum reads st's file whole and compares its checksum.
func verifyChecksum(st model.VMState) error {
	sum, size, err := checksumFile(st.File)
	switch {
	case err != nil:
		return fmt.Errorf("%w: %w", errDamagedState, err)
	case size != st.Size:
		return fmt.Errorf("its state file %s has %d bytes, %d were saved (truncated?): %w", st.File, size, st.Size, errDamagedState)
	case sum != st.CRC32C:
		return fmt.Errorf("its state file %s does not match the checksum taken when it was saved (corrupt): %w", st.File, errDamagedState)
	}
	return nil
}

// inputsDiffer names the first input in which saved and now differ, or "".
func inputsDiffer(saved, now map[string]string) string {
	keys := make([]string, 0, len(saved)+len(now))
	for k := range saved {
		keys = append(keys, k)
	}
	for k := range now {
		if _, ok := saved[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		a, inA := saved[k]
		b, inB := now[k]
		switch {
		case !inA:
			return fmt.Sprintf("%s (not recorded when it was saved; now %q)", k, b)
		case !inB:
			return fmt.Sprintf("%s (was %q; the VMM no longer reports it)", k, a)
		case a != b:
			return fmt.Sprintf("%s (was %q, now %q)", k, a, b)
		}
	}
	return ""
}

// describeInputs renders inputs for listings: "k=v, k=v" in key order.
func describeInputs(inputs map[string]string) string {
	keys := make([]string, 0, len(inputs))
	for k := range inputs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + inputs[k]
	}
	return strings.Join(parts, ", ")
}

// restoreFrom is what a start restores instead of booting.
type restoreFrom struct {
	state model.VMState
	// what names it in errors: `checkpoint "x"`, "its suspended state",
	// "the boot template of busybox".
	what string
	// verified: the file's checksum was verified (or taken) just before
	// this start, so launch need not read the file again.
	verified bool
}

// restoreSpec checks st against the VM spec about to be planned and
// returns the spec's Restore. The file's checksum is the caller's to
// verify (launch does it while the VM starts).
func (r *Runtime) restoreSpec(ctx context.Context, b *model.Box, rf *restoreFrom, spec sdk.VMSpec) (*sdk.RestoreSpec, error) {
	ms, err := r.memorySnapshotter(ctx, b, "restore "+rf.what)
	if err != nil {
		return nil, err
	}
	if err := r.checkState(rf.state, ms.name); err != nil {
		return nil, fmt.Errorf("restore %s: %w", rf.what, err)
	}
	if err := inputsMatch(ctx, ms, rf, spec); err != nil {
		return nil, err
	}
	return &sdk.RestoreSpec{Path: rf.state.File, Inputs: rf.state.Inputs}, nil
}

// inputsMatch refuses rf's state when its inputs differ from those of a VM
// planned with spec.
func inputsMatch(ctx context.Context, ms sdk.MemorySnapshotter, rf *restoreFrom, spec sdk.VMSpec) error {
	now, err := ms.StateInputs(ctx, spec)
	if err != nil {
		return fmt.Errorf("restore %s: %w", rf.what, err)
	}
	if d := inputsDiffer(rf.state.Inputs, now); d != "" {
		return fmt.Errorf("restore %s: it was saved with other inputs than this VM would have: %s: %w", rf.what, d, ErrInvalidState)
	}
	return nil
}

// checkInputs refuses a saved state whose inputs differ from those a VM of
// box b would have now, before anything about b changes (a restore that
// stops the box first must not stop it for nothing). The disks' files are
// not inputs: the spec names their roles only.
func (r *Runtime) checkInputs(ctx context.Context, b *model.Box, rf *restoreFrom) error {
	ms, err := r.memorySnapshotter(ctx, b, "restore "+rf.what)
	if err != nil {
		return err
	}
	spec := sdk.VMSpec{
		BoxID: b.ID, VCPUs: b.Config.CPUs, MemoryMiB: b.Config.MemoryMiB, RunDir: r.paths.boxDir(b.ID),
		Disks: []sdk.DiskSpec{
			{Role: sdk.DiskRoleImage, ReadOnly: true, Format: "raw"},
			{Role: sdk.DiskRoleWritable, Format: "qcow2"},
		},
	}
	if err := boxNetworkSpec(b.Config, &spec.Network); err != nil {
		return err
	}
	return inputsMatch(ctx, ms, rf, spec)
}

// removeStateFile deletes a saved state's file; a missing one is fine.
func (r *Runtime) removeStateFile(st model.VMState) {
	if st.File == "" {
		return
	}
	if err := os.Remove(st.File); err != nil && !errors.Is(err, os.ErrNotExist) {
		r.log.Warn("remove a saved VM state", "file", st.File, "error", err)
	}
}

// hostnameOf is a box's host name: the one it was created with, else its
// short ID, as Docker's.
func hostnameOf(b *model.Box) string {
	if b.Config.Hostname != "" {
		return b.Config.Hostname
	}
	return shortID(b.ID)
}
