package core

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/boxctl/boxctl/core/boxstatus"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/state"
	"github.com/boxctl/boxctl/internal/lockfile"
	"github.com/boxctl/boxctl/internal/namecheck"
	"github.com/boxctl/boxctl/sdk"
)

// Snapshot is a named point-in-time state of a box's writable disk.
type Snapshot struct {
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	// Size is what the snapshot holds of its own on the host (bytes);
	// VirtualSize is the disk's size as the guest sees it.
	Size        uint64 `json:"size"`
	VirtualSize uint64 `json:"virtual_size"`
	// Quiesced is how long a running box was held while it was taken
	// (nil: the box was stopped).
	Quiesced *Quiesced `json:"quiesced,omitempty"`
}

// pendingSnapshot marks a box whose snapshot is being taken; recovery
// removes a snapshot a dead process left half-made.
const pendingSnapshot = "snapshot:"

// CreateSnapshot records box ref's writable disk as it is now under name
// ("" picks one). A running box keeps running: the snapshot is taken inside
// the quiesce bracket, and its VM continues on a new overlay while the
// frozen state becomes the snapshot, in constant time; a VMM that cannot
// switch a running VM's disk is ErrUnsupported (stop the box first).
func (r *Runtime) CreateSnapshot(ctx context.Context, ref, name string) (Snapshot, error) {
	if err := r.checkOpen(); err != nil {
		return Snapshot{}, err
	}
	b, lock, err := r.lockAndLoad(ctx, ref)
	if err != nil {
		return Snapshot{}, err
	}
	defer lock.Release()
	snaps, err := r.snapshotsOf(ctx, b, "snapshot")
	if err != nil {
		return Snapshot{}, err
	}
	existing, err := snaps.ListSnapshots(ctx, b.DiskID)
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshots of %s: %w", b.Name, err)
	}
	if name == "" {
		name = freeSnapshotName(existing, time.Now())
	}
	if !namecheck.BoxName(name) {
		return Snapshot{}, fmt.Errorf("snapshot %s: invalid snapshot name %q: use 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit: %w", b.Name, name, ErrInvalidArgument)
	}
	for _, s := range existing {
		if s.Name == name {
			return Snapshot{}, fmt.Errorf("box %s already has a snapshot named %q: choose another name, or remove it first (boxctl snapshot rm %s %s): %w", b.Name, name, b.Name, name, ErrAlreadyExists)
		}
	}
	return r.snapshotLocked(ctx, b, snaps, name)
}

// snapshotLocked takes snapshot name of box b (stopped, or running inside
// the quiesce bracket); the caller holds the box lock.
func (r *Runtime) snapshotLocked(ctx context.Context, b *model.Box, snaps sdk.SnapshotBackend, name string) (Snapshot, error) {
	var sw sdk.DiskSwitcher
	var err error
	switch {
	case b.Status == model.StatusRunning || b.Status == model.StatusPaused:
		if sw, err = r.liveDiskSwitcher(ctx, b, "snapshot"); err != nil {
			return Snapshot{}, err
		}
	case b.Status.Active():
		return Snapshot{}, fmt.Errorf("snapshot %s: the box is %s; wait until it runs or has stopped: %w", b.Name, b.Status, ErrInvalidState)
	}
	if err := r.setPending(ctx, b.ID, pendingSnapshot+name); err != nil {
		return Snapshot{}, err
	}
	r.crashPoint("snapshot", "pending")
	var sn sdk.Snapshot
	var q *Quiesced
	if sw == nil {
		sn, err = snaps.CreateSnapshot(ctx, b.DiskID, name)
	} else {
		var held Quiesced
		held, err = r.quiesced(ctx, b, "snapshot", func(ctx context.Context, vm sdk.VM) error {
			was, err := r.openDisk(ctx, b)
			if err != nil {
				return err
			}
			if sn, err = snaps.CreateSnapshot(ctx, b.DiskID, name); err != nil {
				return err
			}
			r.crashPoint("snapshot", "stored")
			defer r.crashPoint("snapshot", "switched")
			if err := r.switchWritable(ctx, b, sw, vm, was); err != nil {
				// The VM still writes to the file that became the
				// snapshot: drop the snapshot, so that file is the
				// disk's alone again (its new overlay is empty).
				if rerr := snaps.RemoveSnapshot(context.WithoutCancel(ctx), b.DiskID, name); rerr != nil {
					r.log.Error("snapshot: drop a snapshot the VM still writes to", "box", b.ID, "snapshot", name, "error", rerr)
				}
				return err
			}
			return nil
		})
		q = &held
	}
	if err != nil {
		r.clearPending(ctx, b.ID)
		return Snapshot{}, fmt.Errorf("snapshot %s: %w", b.Name, err)
	}
	out := Snapshot{Name: sn.Name, CreatedAt: sn.CreatedAt, Size: sn.Size, VirtualSize: sn.VirtualSize, Quiesced: q}
	err = r.store.Update(ctx, func(tx *state.Tx) error {
		cur, err := tx.Box(b.ID)
		if err != nil {
			return err
		}
		cur.Pending = ""
		if err := tx.PutBox(cur); err != nil {
			return err
		}
		return tx.PutSnapshot(state.Snapshot{BoxID: b.ID, Name: out.Name, CreatedAt: out.CreatedAt, SizeBytes: out.Size})
	})
	return out, err
}

// freeSnapshotName is a name no snapshot in existing has: the time, and a
// counter if two are taken in the same second.
func freeSnapshotName(existing []sdk.Snapshot, now time.Time) string {
	taken := map[string]bool{}
	for _, s := range existing {
		taken[s.Name] = true
	}
	return freeName("snap-", taken, now)
}

// freeName is a name not in taken: prefix and the time, and a counter if
// two are taken in the same second.
func freeName(prefix string, taken map[string]bool, now time.Time) string {
	base := prefix + now.UTC().Format("20060102-150405")
	name := base
	for i := 2; taken[name]; i++ {
		name = fmt.Sprintf("%s-%d", base, i)
	}
	return name
}

// Snapshots lists box ref's snapshots, oldest first.
func (r *Runtime) Snapshots(ctx context.Context, ref string) ([]Snapshot, error) {
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	b, err := r.GetInfo(ctx, ref)
	if err != nil {
		return nil, err
	}
	if !b.DiskCreated {
		return nil, nil
	}
	snaps, err := r.plugins.Snapshots(ctx)
	if err != nil {
		return nil, fmt.Errorf("storage plugin: %w", err)
	}
	list, err := snaps.ListSnapshots(ctx, b.DiskID)
	if err != nil {
		return nil, fmt.Errorf("snapshots of %s: %w", b.Name, err)
	}
	out := make([]Snapshot, 0, len(list))
	for _, s := range list {
		out = append(out, Snapshot{Name: s.Name, CreatedAt: s.CreatedAt, Size: s.Size, VirtualSize: s.VirtualSize})
	}
	return out, nil
}

// RestoreOptions tune RestoreSnapshot.
type RestoreOptions struct {
	// Force stops a running box first (within StopTimeout) instead of
	// refusing.
	Force       bool
	StopTimeout time.Duration
}

// RestoreSnapshot brings box ref's writable disk back to snapshot name,
// discarding what was written since; the snapshot stays. The box must be
// stopped (Force stops it).
func (r *Runtime) RestoreSnapshot(ctx context.Context, ref, name string, opts RestoreOptions) error {
	b, lock, snaps, err := r.lockSnapshot(ctx, ref, name, "restore")
	if err != nil {
		return err
	}
	defer lock.Release()
	if b.Status == model.StatusSuspended {
		if !opts.Force {
			return fmt.Errorf("restore %s to %q: the box is suspended, and its saved processes expect its disk as it is: start it and stop it first, or use --force to discard its saved state: %w", b.Name, name, ErrInvalidState)
		}
		if err := r.discardSuspended(ctx, b); err != nil {
			return err
		}
	}
	if b.Status.Active() {
		if !opts.Force {
			return fmt.Errorf("restore %s to %q: the box is %s, and a restore replaces the disk under it: stop it first, or use --force to stop it: %w", b.Name, name, b.Status, ErrInvalidState)
		}
		timeout := opts.StopTimeout
		if timeout <= 0 {
			timeout = DefaultStopTimeout
		}
		if b, err = r.stopLocked(ctx, b, timeout); err != nil {
			return fmt.Errorf("restore %s: stop it: %w", b.Name, err)
		}
	}
	if _, err := snaps.RestoreSnapshot(ctx, b.DiskID, name); err != nil {
		return fmt.Errorf("restore %s to %q: %w", b.Name, name, err)
	}
	return nil
}

// RemoveSnapshot deletes snapshot name of box ref; refused while a box
// cloned from that snapshot depends on it (the dependants are named).
func (r *Runtime) RemoveSnapshot(ctx context.Context, ref, name string) error {
	b, lock, snaps, err := r.lockSnapshot(ctx, ref, name, "remove the snapshot of")
	if err != nil {
		return err
	}
	defer lock.Release()
	var dependants []string
	if err := r.store.View(ctx, func(tx *state.Tx) error {
		all, err := tx.Boxes()
		for _, o := range all {
			if o.ClonedFrom == b.ID && o.ClonedSnapshot == name {
				dependants = append(dependants, o.Name)
			}
		}
		return err
	}); err != nil {
		return err
	}
	if len(dependants) > 0 {
		return fmt.Errorf("snapshot %q of %s: boxes %s were cloned from it and depend on it: remove them first: %w", name, b.Name, strings.Join(dependants, ", "), ErrInvalidState)
	}
	if err := snaps.RemoveSnapshot(ctx, b.DiskID, name); err != nil {
		return fmt.Errorf("remove snapshot %q of %s: %w", name, b.Name, err)
	}
	return r.store.Update(ctx, func(tx *state.Tx) error { return tx.DeleteSnapshot(b.ID, name) })
}

// lockSnapshot locks box ref and checks that it has snapshot name; the
// caller releases the lock.
func (r *Runtime) lockSnapshot(ctx context.Context, ref, name, what string) (*model.Box, *lockfile.Lock, sdk.SnapshotBackend, error) {
	if err := r.checkOpen(); err != nil {
		return nil, nil, nil, err
	}
	b, lock, err := r.lockAndLoad(ctx, ref)
	if err != nil {
		return nil, nil, nil, err
	}
	snaps, err := r.snapshotsOf(ctx, b, what)
	if err == nil {
		err = r.checkSnapshot(ctx, snaps, b, name)
	}
	if err != nil {
		lock.Release()
		return nil, nil, nil, err
	}
	return b, lock, snaps, nil
}

// forgetSnapshot drops the core's record of snapshot name of box id and
// the box's pending mark, in one transaction.
func (r *Runtime) forgetSnapshot(ctx context.Context, id, name string) error {
	return r.store.Update(ctx, func(tx *state.Tx) error {
		cur, err := tx.Box(id)
		if err != nil {
			return err
		}
		cur.Pending = ""
		if err := tx.PutBox(cur); err != nil {
			return err
		}
		return tx.DeleteSnapshot(id, name)
	})
}

// snapshotsOf returns the storage plugin's snapshot role for work on box
// b's disk, or why there is none.
func (r *Runtime) snapshotsOf(ctx context.Context, b *model.Box, what string) (sdk.SnapshotBackend, error) {
	if !b.DiskCreated {
		return nil, fmt.Errorf("%s %s: the box has no disk yet (it has never started), so it has no snapshots: start it first: %w", what, b.Name, ErrInvalidState)
	}
	snaps, err := r.plugins.Snapshots(ctx)
	if err != nil {
		return nil, fmt.Errorf("storage plugin: %w", err)
	}
	return snaps, nil
}

// checkSnapshot says clearly that box b has no snapshot name, listing those
// it has.
func (r *Runtime) checkSnapshot(ctx context.Context, snaps sdk.SnapshotBackend, b *model.Box, name string) error {
	list, err := snaps.ListSnapshots(ctx, b.DiskID)
	if err != nil {
		return fmt.Errorf("snapshots of %s: %w", b.Name, err)
	}
	names := make([]string, 0, len(list))
	for _, s := range list {
		if s.Name == name {
			return nil
		}
		names = append(names, s.Name)
	}
	have := "it has none"
	if len(names) > 0 {
		have = "it has " + strings.Join(names, ", ")
	}
	return fmt.Errorf("box %s has no snapshot %q (%s; see boxctl snapshot ls %s): %w", b.Name, name, have, b.Name, ErrNotFound)
}

// setPending and clearPending mark box id as in the middle of an operation
// recovery must undo should this process die (see recoverBox).
func (r *Runtime) setPending(ctx context.Context, id, op string) error {
	return r.store.Update(ctx, func(tx *state.Tx) error {
		b, err := tx.Box(id)
		if err != nil {
			return err
		}
		b.Pending = op
		return tx.PutBox(b)
	})
}

func (r *Runtime) clearPending(ctx context.Context, id string) {
	if err := r.setPending(context.WithoutCancel(ctx), id, ""); err != nil {
		r.log.Warn("clear a pending operation", "box", id, "error", err)
	}
}

// pendingCloneSource marks a running box whose disk is being cloned: the
// storage plugin may freeze the file its VM has open.
const pendingCloneSource = "clone-source"

// resyncLiveDisk moves running box b's VM onto its writable disk's current
// top file, for a bracket a dead process left between the storage plugin's
// freeze and the VM's switch (the VM then writes into a frozen base). The
// switch is idempotent: a VM on the top already is left as it is.
func (r *Runtime) resyncLiveDisk(ctx context.Context, b *model.Box) error {
	if b.Status != model.StatusRunning || b.Run == nil {
		return nil // a stopped box opens its current top at the next start
	}
	sw, err := r.liveDiskSwitcher(ctx, b, "recover")
	if err != nil {
		return err
	}
	_, err = r.quiesced(ctx, b, "recover", func(ctx context.Context, vm sdk.VM) error {
		spec, err := r.writableDiskSpec(ctx, b)
		if err != nil {
			return err
		}
		return sw.SwitchDisk(ctx, vm, writableDiskIndex, spec)
	})
	return err
}

// recoverSnapshot rolls back a snapshot a dead process was taking of box
// b: the snapshot may exist, and if the box ran, its VM may have gone on
// writing into it (the switch to the new overlay may not have happened).
func (r *Runtime) recoverSnapshot(ctx context.Context, b *model.Box) {
	name := strings.TrimPrefix(b.Pending, pendingSnapshot)
	if snaps, err := r.plugins.Snapshots(ctx); err == nil {
		err = snaps.RemoveSnapshot(ctx, b.DiskID, name)
		if err != nil && !errors.Is(err, sdk.ErrNotFound) {
			r.log.Warn("recovery: remove a half-made snapshot", "box", b.ID, "snapshot", name, "error", err)
			return
		}
	} else {
		r.log.Warn("recovery: storage plugin", "error", err)
		return
	}
	if err := r.forgetSnapshot(ctx, b.ID, name); err != nil {
		r.log.Warn("recovery: clear a half-made snapshot", "box", b.ID, "error", err)
	}
}

// CloneOptions tune CloneBoxes.
type CloneOptions struct {
	// Name of the clone; with Count > 1, the clones are Name-1 ... Name-N.
	// "" generates names.
	Name string
	// Count is how many clones to make (0 means 1).
	Count int
	// Snapshot clones the source's named snapshot instead of its current
	// state; the clones then depend on that snapshot.
	Snapshot string
	// Start starts every clone once all are made.
	Start bool
}

// maxClones bounds one CloneBoxes call.
const maxClones = 256

// CloneBoxes makes Count new boxes with the source box's configuration and
// each its own writable disk from the source's current disk state (or its
// snapshot), in constant time per clone. All or nothing: a failure half-way
// removes the clones made so far. A running source keeps running: its disk
// state is taken inside the quiesce bracket. The clones are Stopped unless
// Start.
func (r *Runtime) CloneBoxes(ctx context.Context, srcRef string, opts CloneOptions) ([]*Box, error) {
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	count := opts.Count
	if count == 0 {
		count = 1
	}
	if count < 0 || count > maxClones {
		return nil, fmt.Errorf("clone: count %d out of range 1-%d: %w", opts.Count, maxClones, ErrInvalidArgument)
	}
	src, lock, err := r.lockAndLoad(ctx, srcRef)
	if err != nil {
		return nil, err
	}
	defer lock.Release()
	var snaps sdk.SnapshotBackend
	if src.DiskCreated {
		if snaps, err = r.plugins.Snapshots(ctx); err != nil {
			return nil, fmt.Errorf("storage plugin: %w", err)
		}
	}
	if opts.Snapshot != "" {
		if snaps == nil {
			return nil, fmt.Errorf("clone %s from snapshot %q: the box has no disk yet, so it has no snapshots: %w", src.Name, opts.Snapshot, ErrNotFound)
		}
		if err := r.checkSnapshot(ctx, snaps, src, opts.Snapshot); err != nil {
			return nil, err
		}
	}
	var sw sdk.DiskSwitcher
	live := src.DiskCreated && opts.Snapshot == "" && (src.Status == model.StatusRunning || src.Status == model.StatusPaused)
	if live {
		if sw, err = r.liveDiskSwitcher(ctx, src, "clone"); err != nil {
			return nil, err
		}
	} else if src.Status.Active() && src.DiskCreated && opts.Snapshot == "" {
		return nil, fmt.Errorf("clone %s: the box is %s; wait until it runs or has stopped: %w", src.Name, src.Status, ErrInvalidState)
	}
	cloner, _ := snaps.(sdk.Cloner)
	if src.DiskCreated && cloner == nil {
		return nil, fmt.Errorf("clone %s: the storage plugin %q cannot clone disks: %w", src.Name, r.cfg.Storage, ErrUnsupported)
	}
	clones, unlock, err := r.insertClones(ctx, src, opts, count)
	if err != nil {
		return nil, err
	}
	r.crashPoint("clone", "records")
	done := false
	defer func() {
		if !done {
			r.discardClones(ctx, clones)
		}
		unlock()
	}()
	if src.DiskCreated {
		cloneAll := func(ctx context.Context) error {
			for _, c := range clones {
				// After the first clone the source's overlay is empty
				// (the VM is paused and frozen), so the others share the
				// base the first one froze.
				if _, err := cloner.Clone(ctx, sdk.CloneRequest{ID: src.DiskID, NewID: c.DiskID, Snapshot: opts.Snapshot}); err != nil {
					return fmt.Errorf("copy its disk for %s: %w", c.Name, err)
				}
			}
			r.crashPoint("clone", "disks")
			return nil
		}
		if live {
			if err := r.setPending(ctx, src.ID, pendingCloneSource); err != nil {
				return nil, err
			}
			defer r.clearPending(ctx, src.ID)
			_, err = r.quiesced(ctx, src, "clone", func(ctx context.Context, vm sdk.VM) error {
				was, err := r.openDisk(ctx, src)
				if err != nil {
					return err
				}
				if err := cloneAll(ctx); err != nil {
					// The first clone may have frozen the source's disk
					// already: the VM must move on in any case.
					if serr := r.switchWritable(context.WithoutCancel(ctx), src, sw, vm, was); serr != nil {
						return errors.Join(err, serr)
					}
					return err
				}
				defer r.crashPoint("clone", "switched")
				return r.switchWritable(ctx, src, sw, vm, was)
			})
		} else {
			err = cloneAll(ctx)
		}
		if err != nil {
			return nil, fmt.Errorf("clone %s: %w", src.Name, err)
		}
	}
	err = r.store.Update(ctx, func(tx *state.Tx) error {
		for _, c := range clones {
			if _, err := boxstatus.Cloned(tx, c.ID); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	done = true
	unlock()
	unlock = func() {}
	lock.Release()
	out := make([]*Box, len(clones))
	for i, c := range clones {
		out[i] = &Box{rt: r, id: c.ID}
	}
	if opts.Start {
		for _, c := range clones {
			if err := r.Start(ctx, c.ID); err != nil {
				return out, fmt.Errorf("clone %s: the clones are made, but %s did not start: %w", src.Name, c.Name, err)
			}
		}
	}
	return out, nil
}

// insertClones records count new boxes for clones of src, all in one
// transaction (all names free, or none inserted), marked pending so that
// recovery removes them should this process die before the disks are made.
func (r *Runtime) insertClones(ctx context.Context, src *model.Box, opts CloneOptions, count int) (clones []*model.Box, unlock func(), err error) {
	var locks []*lockfile.Lock
	for i := 1; i <= count; i++ {
		name := opts.Name
		if name != "" && count > 1 {
			name = fmt.Sprintf("%s-%d", opts.Name, i)
		}
		c, err := r.newBox(BoxOptions{Name: name, Config: src.Config})
		if err != nil {
			return nil, nil, fmt.Errorf("clone %s: %w", src.Name, err)
		}
		c.ClonedFrom, c.ClonedSnapshot, c.ImageDigest, c.Image = src.ID, opts.Snapshot, src.ImageDigest, src.Image
		// A clone's disk (and a fork's memory) came from src's VMM.
		c.VMM = recordedVMM(src)
		c.Pending = "cloning"
		clones = append(clones, c)
	}
	err = r.store.Update(ctx, func(tx *state.Tx) error {
		for _, c := range clones {
			if owner := tx.NameTaken(c.Name); owner != "" {
				return fmt.Errorf("clone %s: the name %q is already in use by box %s: %w", src.Name, c.Name, shortID(owner), ErrAlreadyExists)
			}
			if err := nameShadowsID(tx, "clone", c.Name); err != nil {
				return err
			}
			if err := r.insertBox(tx, c); err != nil {
				return err
			}
			// Held from before the record is visible, so that recovery
			// in another process never takes a clone in the making for
			// one a dead process left.
			l, ok, err := lockfile.TryAcquire(r.paths.lockPath(c.ID), false)
			if err != nil || !ok {
				return fmt.Errorf("clone: lock new box %s: %v", c.ID, err)
			}
			locks = append(locks, l)
		}
		return nil
	})
	if err != nil {
		for _, l := range locks {
			l.Release()
		}
		for _, c := range clones {
			r.discardNew(c.ID)
		}
		return nil, nil, err
	}
	return clones, func() {
		for _, l := range locks {
			l.Release()
		}
	}, nil
}

// discardClones removes clones a failed CloneBoxes made: their disks (if
// any were made) and records.
func (r *Runtime) discardClones(ctx context.Context, clones []*model.Box) {
	ctx = context.WithoutCancel(ctx)
	for _, c := range clones {
		c.DiskCreated = true // a disk may exist under its ID: releaseStorage ignores a missing one
		if err := r.releaseStorage(ctx, c); err != nil && !errors.Is(err, sdk.ErrNotFound) {
			r.log.Warn("clone: remove a half-made clone's disk", "box", c.ID, "error", err)
			continue
		}
		if err := r.removeLocked(ctx, c.ID); err != nil {
			r.log.Warn("clone: remove a half-made clone", "box", c.ID, "error", err)
		}
	}
}
