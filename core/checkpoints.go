package core

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/boxctl/boxctl/core/boxstatus"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/state"
	"github.com/boxctl/boxctl/internal/lockfile"
	"github.com/boxctl/boxctl/internal/namecheck"
	"github.com/boxctl/boxctl/sdk"
)

// CheckpointInfo describes a checkpoint of a box: its memory and disk at
// one instant.
type CheckpointInfo struct {
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	// Size is the memory state file's size in bytes (the disk state is an
	// O(1) clone sharing the box's disk files).
	Size      int64  `json:"size"`
	CPUs      int    `json:"cpus"`
	MemoryMiB uint64 `json:"memory_mib"`
	VMM       string `json:"vmm"`
	// Inputs are what restoring it depends on: kernel, initramfs, the
	// hypervisor and its version, ... ("k=v, k=v").
	Inputs string `json:"inputs"`
	// Paused is how long the box's vCPUs were stopped to take it.
	Paused time.Duration `json:"paused_ns"`
}

func checkpointInfo(c model.Checkpoint) CheckpointInfo {
	return CheckpointInfo{Name: c.Name, CreatedAt: c.CreatedAt, Size: c.State.Size, CPUs: c.CPUs, MemoryMiB: c.MemoryMiB,
		VMM: c.State.VMM, Inputs: describeInputs(c.State.Inputs), Paused: c.Paused}
}

// pendingCheckpoint marks a box whose checkpoint is being taken.
const pendingCheckpoint = "checkpoint:"

// CreateCheckpoint saves running box ref's memory and writable disk at
// one instant under name ("" picks one); the box keeps running (its
// vCPUs stop for the time the memory takes to save).
func (r *Runtime) CreateCheckpoint(ctx context.Context, ref, name string) (CheckpointInfo, error) {
	if err := r.checkOpen(); err != nil {
		return CheckpointInfo{}, err
	}
	b, lock, err := r.lockAndLoad(ctx, ref)
	if err != nil {
		return CheckpointInfo{}, err
	}
	defer lock.Release()
	if err := refuseMounts("checkpoint", b); err != nil {
		return CheckpointInfo{}, err
	}
	var existing []model.Checkpoint
	if err := r.store.View(ctx, func(tx *state.Tx) error {
		existing, err = tx.Checkpoints(b.ID)
		return err
	}); err != nil {
		return CheckpointInfo{}, err
	}
	if name == "" {
		name = freeCheckpointName(existing, time.Now())
	}
	if !namecheck.BoxName(name) {
		return CheckpointInfo{}, fmt.Errorf("checkpoint %s: invalid checkpoint name %q: use 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit: %w", b.Name, name, ErrInvalidArgument)
	}
	for _, c := range existing {
		if c.Name == name {
			return CheckpointInfo{}, fmt.Errorf("box %s already has a checkpoint named %q: choose another name, or remove it first (boxctl checkpoint rm %s %s): %w", b.Name, name, b.Name, name, ErrAlreadyExists)
		}
	}
	diskID := "ckpt-" + newID()[:20]
	if err := r.setPending(ctx, b.ID, pendingCheckpoint+diskID); err != nil {
		return CheckpointInfo{}, err
	}
	r.crashPoint("checkpoint", "pending")
	c, err := r.captureRunning(ctx, b, "checkpoint", []string{diskID}, r.paths.vmStateDir(b.ID), diskID)
	if err != nil {
		r.clearPending(ctx, b.ID)
		return CheckpointInfo{}, err
	}
	cp := model.Checkpoint{BoxID: b.ID, Name: name, CreatedAt: time.Now().UTC(), State: c.state, DiskID: diskID,
		CPUs: b.Config.CPUs, MemoryMiB: b.Config.MemoryMiB, Paused: c.paused.Paused}
	err = r.store.Update(ctx, func(tx *state.Tx) error {
		cur, err := tx.Box(b.ID)
		if err != nil {
			return err
		}
		cur.Pending = ""
		if err := tx.PutBox(cur); err != nil {
			return err
		}
		return tx.PutCheckpoint(cp)
	})
	if err != nil {
		r.removeStateFile(c.state)
		r.removeDisks(context.WithoutCancel(ctx), []string{diskID})
		return CheckpointInfo{}, err
	}
	return checkpointInfo(cp), nil
}

// freeCheckpointName is a name no checkpoint in existing has.
func freeCheckpointName(existing []model.Checkpoint, now time.Time) string {
	taken := map[string]bool{}
	for _, c := range existing {
		taken[c.Name] = true
	}
	return freeName("ckpt-", taken, now)
}

// Checkpoints lists box ref's checkpoints, oldest first (a suspended
// box's own state is not among them).
func (r *Runtime) Checkpoints(ctx context.Context, ref string) ([]CheckpointInfo, error) {
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	b, err := r.GetInfo(ctx, ref)
	if err != nil {
		return nil, err
	}
	var cps []model.Checkpoint
	err = r.store.View(ctx, func(tx *state.Tx) error {
		cps, err = tx.Checkpoints(b.ID)
		return err
	})
	out := make([]CheckpointInfo, 0, len(cps))
	for _, c := range cps {
		if c.Name != model.SuspendCheckpoint {
			out = append(out, checkpointInfo(c))
		}
	}
	return out, err
}

// checkpointOf returns box b's checkpoint name, saying clearly which it
// has when it has no such one.
func (r *Runtime) checkpointOf(ctx context.Context, b *model.Box, name string) (model.Checkpoint, error) {
	var cp model.Checkpoint
	var all []model.Checkpoint
	err := r.store.View(ctx, func(tx *state.Tx) error {
		var err error
		if all, err = tx.Checkpoints(b.ID); err != nil {
			return err
		}
		cp, err = tx.Checkpoint(b.ID, name)
		return err
	})
	if errors.Is(err, ErrNotFound) && name != model.SuspendCheckpoint {
		var names []string
		for _, c := range all {
			if c.Name != model.SuspendCheckpoint {
				names = append(names, c.Name)
			}
		}
		have := "it has none"
		if len(names) > 0 {
			have = "it has " + strings.Join(names, ", ")
		}
		return cp, fmt.Errorf("box %s has no checkpoint %q (%s; see boxctl checkpoint ls %s): %w", b.Name, name, have, b.Name, ErrNotFound)
	}
	return cp, err
}

// RemoveCheckpoint removes box ref's checkpoint name: its memory file and
// its disk state.
func (r *Runtime) RemoveCheckpoint(ctx context.Context, ref, name string) error {
	_, lock, cp, err := r.lockCheckpoint(ctx, ref, name)
	if err != nil {
		return err
	}
	defer lock.Release()
	r.forgetCheckpoint(ctx, cp)
	return nil
}

// lockCheckpoint locks box ref and returns it with its checkpoint name.
func (r *Runtime) lockCheckpoint(ctx context.Context, ref, name string) (*model.Box, *lockfile.Lock, model.Checkpoint, error) {
	if err := r.checkOpen(); err != nil {
		return nil, nil, model.Checkpoint{}, err
	}
	b, lock, err := r.lockAndLoad(ctx, ref)
	if err != nil {
		return nil, nil, model.Checkpoint{}, err
	}
	cp, err := r.checkpointOf(ctx, b, name)
	if err != nil {
		lock.Release()
		return nil, nil, model.Checkpoint{}, err
	}
	return b, lock, cp, nil
}

// forgetCheckpoint drops checkpoint cp: record first (so nothing restores
// it any more), then its file and disk.
func (r *Runtime) forgetCheckpoint(ctx context.Context, cp model.Checkpoint) {
	err := r.store.Update(ctx, func(tx *state.Tx) error {
		return tx.DeleteCheckpoint(cp.BoxID, cp.Name)
	})
	if err != nil {
		r.log.Warn("forget a checkpoint", "box", cp.BoxID, "checkpoint", cp.Name, "error", err)
		return
	}
	r.removeStateFile(cp.State)
	if cp.DiskID != "" {
		r.removeDisks(ctx, []string{cp.DiskID})
	}
}

// releaseCheckpoints removes every checkpoint's disk and the box's saved
// states (the records go with the box's).
func (r *Runtime) releaseCheckpoints(ctx context.Context, b *model.Box) error {
	var cps []model.Checkpoint
	if err := r.store.View(ctx, func(tx *state.Tx) error {
		var err error
		cps, err = tx.Checkpoints(b.ID)
		return err
	}); err != nil {
		return err
	}
	var disks []string
	for _, c := range cps {
		if c.DiskID != "" {
			disks = append(disks, c.DiskID)
		}
	}
	r.removeDisks(ctx, disks)
	if err := os.RemoveAll(r.paths.vmStateDir(b.ID)); err != nil {
		return fmt.Errorf("delete saved VM states: %w", err)
	}
	return nil
}

// RestoreCheckpointOptions tune RestoreCheckpoint.
type RestoreCheckpointOptions struct {
	// Force stops a running box first instead of refusing.
	Force       bool
	StopTimeout time.Duration
	Detach      *bool
}

// RestoreCheckpoint brings box ref back to checkpoint name — its disk and
// its memory, every process where it was — and starts it from there. What
// the box wrote since is discarded; the checkpoint stays. The box must be
// stopped (or suspended: its suspended state is discarded); Force stops a
// running box.
func (r *Runtime) RestoreCheckpoint(ctx context.Context, ref, name string, opts RestoreCheckpointOptions) error {
	b, lock, cp, err := r.lockCheckpoint(ctx, ref, name)
	if err != nil {
		return err
	}
	defer lock.Release()
	what := fmt.Sprintf("checkpoint %q of %s", name, b.Name)
	ms, err := r.memorySnapshotter(ctx, b, "restore "+what)
	if err != nil {
		return err
	}
	rf := &restoreFrom{state: cp.State, what: what, verified: true}
	if err := r.verifyState(cp.State, ms.name); err != nil {
		return fmt.Errorf("restore %s: %w; remove it with `boxctl checkpoint rm %s %s`", what, err, b.Name, name)
	}
	if err := r.checkInputs(ctx, b, rf); err != nil {
		return fmt.Errorf("%w; it cannot be restored with what is configured now: remove it with `boxctl checkpoint rm %s %s`", err, b.Name, name)
	}
	if err := r.checkNoDiskSnapshots(ctx, b, what); err != nil {
		return err
	}
	if b.Status.Active() {
		if !opts.Force {
			return fmt.Errorf("restore %s: the box is %s: stop it first, or use --force to stop it: %w", what, b.Status, ErrInvalidState)
		}
		timeout := opts.StopTimeout
		if timeout <= 0 {
			timeout = DefaultStopTimeout
		}
		if b, err = r.stopLocked(ctx, b, timeout); err != nil {
			return err
		}
	}
	if b.Status == model.StatusSuspended {
		if err := r.discardSuspended(ctx, b); err != nil {
			return err
		}
	}
	// The box's disk becomes a clone of the checkpoint's; the old disk goes
	// once the box's record names the new one.
	snaps, err := r.plugins.Snapshots(ctx)
	if err != nil {
		return fmt.Errorf("storage plugin: %w", err)
	}
	cloner, ok := snaps.(sdk.Cloner)
	if !ok {
		return fmt.Errorf("restore %s: the storage plugin %q cannot clone disks: %w", what, r.cfg.Storage, ErrUnsupported)
	}
	newDisk := "box-" + newID()[:20]
	if _, err := cloner.Clone(ctx, sdk.CloneRequest{ID: cp.DiskID, NewID: newDisk}); err != nil {
		return fmt.Errorf("restore %s: copy its disk state: %w", what, err)
	}
	old := b.DiskID
	err = r.store.Update(ctx, func(tx *state.Tx) error {
		cur, err := tx.Box(b.ID)
		if err != nil {
			return err
		}
		cur.DiskID, cur.DiskCreated = newDisk, true
		return tx.PutBox(cur)
	})
	if err != nil {
		r.removeDisks(context.WithoutCancel(ctx), []string{newDisk})
		return err
	}
	if old != "" && b.DiskCreated {
		r.removeDisks(context.WithoutCancel(ctx), []string{old})
	}
	if b, err = r.reload(ctx, b.ID); err != nil {
		return err
	}
	so := startOptions{detach: opts.Detach, restore: rf}
	return r.startLocked(ctx, b, so)
}

// checkNoDiskSnapshots refuses a checkpoint restore of a box whose disk
// has snapshots: the restore gives the box a new disk (a clone of the
// checkpoint's), and the old disk's snapshots would go with it.
func (r *Runtime) checkNoDiskSnapshots(ctx context.Context, b *model.Box, what string) error {
	if !b.DiskCreated || b.DiskID == "" {
		return nil
	}
	snaps, err := r.plugins.Snapshots(ctx)
	if err != nil {
		return fmt.Errorf("storage plugin: %w", err)
	}
	list, err := snaps.ListSnapshots(ctx, b.DiskID)
	if err != nil {
		return fmt.Errorf("restore %s: list the disk snapshots of %s: %w", what, b.Name, err)
	}
	if len(list) == 0 {
		return nil
	}
	names := make([]string, 0, len(list))
	for _, s := range list {
		names = append(names, s.Name)
	}
	return fmt.Errorf("restore %s: the box has disk snapshots (%s) that the restore would lose, its disk being replaced by the checkpoint's; "+
		"keep them in another box (`boxctl clone %s --snapshot NAME --name COPY`) or remove them (`boxctl snapshot rm %s NAME`) first: %w",
		what, strings.Join(names, ", "), b.Name, b.Name, ErrInvalidState)
}

// recoverCheckpoint removes what a checkpoint that died left: the disk
// clone and state file it was making (named after diskID), unless they
// were recorded; and it moves the box's VM onto its disk's top file.
func (r *Runtime) recoverCheckpoint(ctx context.Context, b *model.Box) {
	diskID := strings.TrimPrefix(b.Pending, pendingCheckpoint)
	var recorded bool
	_ = r.store.View(ctx, func(tx *state.Tx) error {
		cps, err := tx.Checkpoints(b.ID)
		for _, c := range cps {
			recorded = recorded || c.DiskID == diskID
		}
		return err
	})
	if !recorded {
		r.removeDisks(ctx, []string{diskID})
	}
	if err := r.resyncLiveDisk(ctx, b); err != nil {
		r.log.Warn("recovery: move a box's VM onto its disk's top file", "box", b.ID, "error", err)
	}
	r.clearPending(ctx, b.ID)
}

// suspendedState is suspended box b's saved state.
func (r *Runtime) suspendedState(ctx context.Context, b *model.Box) (model.Checkpoint, error) {
	cp, err := r.checkpointOf(ctx, b, model.SuspendCheckpoint)
	if errors.Is(err, ErrNotFound) {
		return cp, fmt.Errorf("box %s is suspended but its saved state is missing; `boxctl stop %s` makes it a stopped box that boots afresh: %w", b.Name, b.Name, ErrInvalidState)
	}
	return cp, err
}

// discardSuspended drops suspended box b's saved state: it becomes a
// stopped box whose next start boots afresh (its disk is kept as it was,
// like after a power cut).
func (r *Runtime) discardSuspended(ctx context.Context, b *model.Box) error {
	cp, cerr := r.checkpointOf(ctx, b, model.SuspendCheckpoint)
	err := r.store.Update(ctx, func(tx *state.Tx) error {
		if _, err := boxstatus.Discarded(tx, b.ID); err != nil {
			return err
		}
		return tx.DeleteCheckpoint(b.ID, model.SuspendCheckpoint)
	})
	if err != nil {
		return err
	}
	if cerr == nil {
		r.removeStateFile(cp.State)
	}
	return nil
}
