package store

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/boxctl/boxctl/plugins/storage-qcow2/qcow2"
	"github.com/boxctl/boxctl/sdk"
)

// overlayUsage reads an overlay's own allocation: the guest bytes it holds
// data for, its virtual size, and whether it holds nothing at all (every
// cluster falls through to the backing file).
func overlayUsage(path string) (data uint64, size uint64, empty bool, err error) {
	img, err := qcow2.Open(path, qcow2.OpenOptions{NoBacking: true})
	if err != nil {
		return 0, 0, false, err
	}
	defer img.Close()
	exts, err := img.Extents(0, img.Size())
	if err != nil {
		return 0, 0, false, err
	}
	empty = true
	for _, e := range exts {
		if e.Kind == qcow2.ExtentData {
			data += uint64(e.Length)
		}
		if e.Kind != qcow2.ExtentBacking {
			empty = false
		}
	}
	return data, uint64(img.Size()), empty, nil
}

func snapshotOf(diskID string, sn *snapshotRecord) sdk.Snapshot {
	return sdk.Snapshot{DiskID: diskID, Name: sn.Name, CreatedAt: time.Unix(0, sn.CreatedAt).UTC(), Size: sn.Size, VirtualSize: sn.VirtualSize}
}

// CreateSnapshot implements sdk.SnapshotBackend: the overlay is frozen into
// a new immutable base (a rename) and a fresh overlay is put on top.
func (s *Store) CreateSnapshot(ctx context.Context, id, name string) (sdk.Snapshot, error) {
	cfg, err := s.settings()
	if err != nil {
		return sdk.Snapshot{}, err
	}
	if err := checkDiskID("disk ID", id); err != nil {
		return sdk.Snapshot{}, err
	}
	if err := checkSnapshotName(name); err != nil {
		return sdk.Snapshot{}, err
	}
	locks, err := s.lockDisks(ctx, cfg, []string{id}, false)
	if err != nil {
		return sdk.Snapshot{}, err
	}
	defer locks.release()
	d, err := getDisk(ctx, cfg, id)
	if err != nil {
		return sdk.Snapshot{}, err
	}
	if _, sn := d.snapshot(name); sn != nil {
		return sdk.Snapshot{}, fmt.Errorf("snapshot %q of disk %s: %w", name, id, sdk.ErrAlreadyExists)
	}
	data, vsize, _, err := overlayUsage(cfg.path(diskFile(id)))
	if err != nil {
		return sdk.Snapshot{}, fmt.Errorf("snapshot disk %s: %w", id, err)
	}
	op, frozen := newID(), newID()
	tmp := tempDiskFile(id, op)
	in := &intent{ID: op, Op: opSnapshot, Disks: []string{id}, Disk: id, Base: frozen, Name: name, Temps: []string{tmp}}
	if err := cfg.db.update(ctx, func(t *tx) error {
		d, err := t.disk(id)
		if err != nil {
			return err
		}
		if d == nil {
			return fmt.Errorf("disk %s: %w", id, sdk.ErrNotFound)
		}
		if _, sn := d.snapshot(name); sn != nil {
			return fmt.Errorf("snapshot %q of disk %s: %w", name, id, sdk.ErrAlreadyExists)
		}
		if err := checkFreezable(t, d); err != nil {
			return err
		}
		return t.putIntent(in)
	}); err != nil {
		return sdk.Snapshot{}, err
	}
	s.crashPoint(opSnapshot, "journaled")
	done := false
	defer s.rollbackUnless(ctx, cfg, in, &done)

	if err := s.freeze(cfg, opSnapshot, id, frozen, tmp, int64(vsize)); err != nil {
		return sdk.Snapshot{}, fmt.Errorf("snapshot disk %s: %w", id, err)
	}
	sn := snapshotRecord{Name: name, Base: frozen, CreatedAt: time.Now().UnixNano(), Size: data, VirtualSize: vsize}
	if err := cfg.db.update(ctx, func(t *tx) error {
		d, err := t.disk(id)
		if err != nil {
			return err
		}
		// The frozen base takes over the overlay's reference to the old
		// base; the disk and the snapshot reference the frozen one.
		if err := t.putBase(&baseRecord{ID: frozen, Kind: kindFrozen, Parent: d.Base, Refs: 2}); err != nil {
			return err
		}
		d.Base = frozen
		d.Snapshots = append(d.Snapshots, sn)
		if err := t.putDisk(d); err != nil {
			return err
		}
		return t.deleteIntent(op)
	}); err != nil {
		return sdk.Snapshot{}, fmt.Errorf("snapshot disk %s: %w", id, err)
	}
	done = true
	s.crashPoint(opSnapshot, "committed")
	return snapshotOf(id, &sn), nil
}

// freeze moves disk id's overlay to bases/<frozen>.qcow2, makes it
// read-only, and puts a new empty overlay over it in its place.
func (s *Store) freeze(cfg *settings, op, id, frozen, tmp string, size int64) error {
	overlay, base := cfg.path(diskFile(id)), cfg.path(baseFileByID(frozen))
	if err := renameDurable(overlay, base); err != nil {
		return err
	}
	s.crashPoint(op, "frozen")
	if err := chmodDurable(base, 0o444); err != nil {
		return err
	}
	s.crashPoint(op, "chmod")
	if err := createOverlay(cfg, tmp, frozen, size); err != nil {
		return err
	}
	s.crashPoint(op, "overlay-created")
	if err := renameDurable(cfg.path(tmp), overlay); err != nil {
		return err
	}
	s.crashPoint(op, "renamed")
	return nil
}

// ListSnapshots implements sdk.SnapshotBackend, oldest first.
func (s *Store) ListSnapshots(ctx context.Context, id string) ([]sdk.Snapshot, error) {
	cfg, err := s.settings()
	if err != nil {
		return nil, err
	}
	if err := checkDiskID("disk ID", id); err != nil {
		return nil, err
	}
	locks, err := s.lockDisks(ctx, cfg, []string{id}, true)
	if err != nil {
		return nil, err
	}
	defer locks.release()
	d, err := getDisk(ctx, cfg, id)
	if err != nil {
		return nil, err
	}
	sort.SliceStable(d.Snapshots, func(i, j int) bool { return d.Snapshots[i].CreatedAt < d.Snapshots[j].CreatedAt })
	out := make([]sdk.Snapshot, 0, len(d.Snapshots))
	for i := range d.Snapshots {
		out = append(out, snapshotOf(id, &d.Snapshots[i]))
	}
	return out, nil
}

// RestoreSnapshot implements sdk.SnapshotBackend: a new empty overlay over
// the snapshot's base replaces the disk's overlay.
func (s *Store) RestoreSnapshot(ctx context.Context, id, name string) (sdk.Snapshot, error) {
	cfg, err := s.settings()
	if err != nil {
		return sdk.Snapshot{}, err
	}
	if err := checkDiskID("disk ID", id); err != nil {
		return sdk.Snapshot{}, err
	}
	locks, err := s.lockDisks(ctx, cfg, []string{id}, false)
	if err != nil {
		return sdk.Snapshot{}, err
	}
	defer locks.release()
	d, err := getDisk(ctx, cfg, id)
	if err != nil {
		return sdk.Snapshot{}, err
	}
	_, sn := d.snapshot(name)
	if sn == nil {
		return sdk.Snapshot{}, fmt.Errorf("snapshot %q of disk %s: %w", name, id, sdk.ErrNotFound)
	}
	overlay := cfg.path(diskFile(id))
	ino, err := inode(overlay)
	if err != nil {
		return sdk.Snapshot{}, fmt.Errorf("restore disk %s: %w", id, err)
	}
	op := newID()
	tmp := tempDiskFile(id, op)
	in := &intent{ID: op, Op: opRestore, Disks: []string{id}, Disk: id, Base: sn.Base, Name: name, Temps: []string{tmp}, OldInode: ino}
	if err := cfg.db.update(ctx, func(t *tx) error {
		d, err := t.disk(id)
		if err != nil {
			return err
		}
		if d == nil {
			return fmt.Errorf("disk %s: %w", id, sdk.ErrNotFound)
		}
		if _, cur := d.snapshot(name); cur == nil || cur.Base != sn.Base {
			return fmt.Errorf("snapshot %q of disk %s changed meanwhile; retry: %w", name, id, sdk.ErrInvalidState)
		}
		return t.putIntent(in)
	}); err != nil {
		return sdk.Snapshot{}, err
	}
	s.crashPoint(opRestore, "journaled")
	done := false
	defer s.rollbackUnless(ctx, cfg, in, &done)

	if err := createOverlay(cfg, tmp, sn.Base, int64(sn.VirtualSize)); err != nil {
		return sdk.Snapshot{}, fmt.Errorf("restore disk %s: %w", id, err)
	}
	s.crashPoint(opRestore, "overlay-created")
	if err := renameDurable(cfg.path(tmp), overlay); err != nil {
		return sdk.Snapshot{}, fmt.Errorf("restore disk %s: %w", id, err)
	}
	s.crashPoint(opRestore, "renamed")
	cleanup, err := s.commitRestore(ctx, cfg, in)
	if err != nil {
		return sdk.Snapshot{}, fmt.Errorf("restore disk %s: %w", id, err)
	}
	done = true
	s.crashPoint(opRestore, "committed")
	if err := s.finishCleanup(ctx, cfg, cleanup, opRestore); err != nil {
		return sdk.Snapshot{}, fmt.Errorf("restore disk %s: %w", id, err)
	}
	return snapshotOf(id, sn), nil
}

// commitRestore records that disk in.Disk now overlays base in.Base. It
// returns the cleanup record for the files this freed, if any.
func (s *Store) commitRestore(ctx context.Context, cfg *settings, in *intent) (*intent, error) {
	var cleanup *intent
	err := cfg.db.update(ctx, func(t *tx) error {
		d, err := t.disk(in.Disk)
		if err != nil {
			return err
		}
		if d == nil {
			return fmt.Errorf("disk %s vanished during a restore (store damaged)", in.Disk)
		}
		if err := t.incref(in.Base); err != nil {
			return err
		}
		var garbage []string
		if err := t.decref(d.Base, &garbage); err != nil {
			return err
		}
		d.Base = in.Base
		if err := t.putDisk(d); err != nil {
			return err
		}
		if err := t.deleteIntent(in.ID); err != nil {
			return err
		}
		if len(garbage) == 0 {
			return nil
		}
		cleanup = &intent{ID: newID(), Op: opRestore, Disks: in.Disks, Disk: in.Disk, Committed: true, Garbage: garbage}
		return t.putIntent(cleanup)
	})
	return cleanup, err
}

// RemoveSnapshot implements sdk.SnapshotBackend. It is refused while a disk
// cloned from the snapshot still overlays its base.
func (s *Store) RemoveSnapshot(ctx context.Context, id, name string) error {
	cfg, err := s.settings()
	if err != nil {
		return err
	}
	if err := checkDiskID("disk ID", id); err != nil {
		return err
	}
	locks, err := s.lockDisks(ctx, cfg, []string{id}, false)
	if err != nil {
		return err
	}
	defer locks.release()
	var cleanup *intent
	if err := cfg.db.update(ctx, func(t *tx) error {
		d, err := t.disk(id)
		if err != nil {
			return err
		}
		if d == nil {
			return fmt.Errorf("disk %s: %w", id, sdk.ErrNotFound)
		}
		i, sn := d.snapshot(name)
		if sn == nil {
			return fmt.Errorf("snapshot %q of disk %s: %w", name, id, sdk.ErrNotFound)
		}
		if dep, err := cloneOf(t, id, sn); err != nil || dep != "" {
			if err == nil {
				err = fmt.Errorf("remove snapshot %q of disk %s: disk %s was cloned from it and depends on it; remove that disk first: %w", name, id, dep, sdk.ErrInvalidState)
			}
			return err
		}
		base := sn.Base
		d.Snapshots = append(d.Snapshots[:i], d.Snapshots[i+1:]...)
		if err := t.putDisk(d); err != nil {
			return err
		}
		var garbage []string
		if err := t.decref(base, &garbage); err != nil {
			return err
		}
		if len(garbage) == 0 {
			return nil
		}
		cleanup = &intent{ID: newID(), Op: opRemoveSnapshot, Disks: []string{id}, Disk: id, Committed: true, Garbage: garbage}
		return t.putIntent(cleanup)
	}); err != nil {
		return err
	}
	s.crashPoint(opRemoveSnapshot, "committed")
	return s.finishCleanup(ctx, cfg, cleanup, opRemoveSnapshot)
}

// cloneOf returns a disk cloned from snapshot sn of disk id whose chain
// still contains the snapshot's base, or "".
func cloneOf(t *tx, id string, sn *snapshotRecord) (string, error) {
	ds, err := t.disks()
	if err != nil {
		return "", err
	}
	for _, d := range ds {
		if d.ID == id || d.OriginDisk != id || d.OriginSnapshot != sn.Name {
			continue
		}
		chain, err := t.chain(d.Base)
		if err != nil {
			return "", err
		}
		for _, b := range chain {
			if b == sn.Base {
				return d.ID, nil
			}
		}
	}
	return "", nil
}

// Clone implements sdk.Cloner in constant time: the new disk is
// an empty overlay over the snapshot's base, or over the source's current
// state frozen into a new base that both disks then overlay.
func (s *Store) Clone(ctx context.Context, req sdk.CloneRequest) (sdk.Disk, error) {
	cfg, err := s.settings()
	if err != nil {
		return sdk.Disk{}, err
	}
	src, dst, snap := req.ID, req.NewID, req.Snapshot
	if err := checkDiskID("disk ID", src); err != nil {
		return sdk.Disk{}, err
	}
	if err := checkDiskID("new disk ID", dst); err != nil {
		return sdk.Disk{}, err
	}
	if src == dst {
		return sdk.Disk{}, fmt.Errorf("clone disk %s onto itself: %w", src, sdk.ErrInvalidArgument)
	}
	locks, err := s.lockDisks(ctx, cfg, []string{src, dst}, false)
	if err != nil {
		return sdk.Disk{}, err
	}
	defer locks.release()
	d, err := getDisk(ctx, cfg, src)
	if err != nil {
		return sdk.Disk{}, err
	}
	if _, err := getDisk(ctx, cfg, dst); err == nil {
		return sdk.Disk{}, fmt.Errorf("clone disk %s to %s: %w", src, dst, sdk.ErrAlreadyExists)
	}
	var base string
	var size uint64
	if snap != "" {
		_, sn := d.snapshot(snap)
		if sn == nil {
			return sdk.Disk{}, fmt.Errorf("snapshot %q of disk %s: %w", snap, src, sdk.ErrNotFound)
		}
		base, size = sn.Base, sn.VirtualSize
	} else {
		_, vsize, empty, err := overlayUsage(cfg.path(diskFile(src)))
		if err != nil {
			return sdk.Disk{}, fmt.Errorf("clone disk %s: %w", src, err)
		}
		size = vsize
		if empty && d.Base != "" {
			base = d.Base // nothing to freeze: share the current base
		}
	}
	var info sdk.Disk
	if base != "" {
		info, err = s.cloneShared(ctx, cfg, src, dst, snap, base, size)
	} else {
		info, err = s.cloneFrozen(ctx, cfg, src, dst, size)
	}
	if err != nil {
		return sdk.Disk{}, fmt.Errorf("clone disk %s to %s: %w", src, dst, err)
	}
	return info, nil
}

// cloneShared creates dst as an overlay over an existing base.
func (s *Store) cloneShared(ctx context.Context, cfg *settings, src, dst, snap, base string, size uint64) (sdk.Disk, error) {
	op := newID()
	tmp := tempDiskFile(dst, op)
	in := &intent{ID: op, Op: opCloneShared, Disks: []string{src, dst}, Disk: src, NewDisk: dst, Base: base, Name: snap, Temps: []string{tmp}}
	if err := cfg.db.update(ctx, func(t *tx) error {
		if err := checkCloneTx(t, src, dst); err != nil {
			return err
		}
		return t.putIntent(in)
	}); err != nil {
		return sdk.Disk{}, err
	}
	s.crashPoint(opCloneShared, "journaled")
	done := false
	defer s.rollbackUnless(ctx, cfg, in, &done)
	if err := createOverlay(cfg, tmp, base, int64(size)); err != nil {
		return sdk.Disk{}, err
	}
	s.crashPoint(opCloneShared, "clone-created")
	if err := renameDurable(cfg.path(tmp), cfg.path(diskFile(dst))); err != nil {
		return sdk.Disk{}, err
	}
	s.crashPoint(opCloneShared, "clone-renamed")
	if err := cfg.db.update(ctx, func(t *tx) error {
		if err := t.incref(base); err != nil {
			return err
		}
		if err := t.putDisk(&diskRecord{ID: dst, Base: base, CreatedAt: time.Now().UnixNano(), OriginDisk: src, OriginSnapshot: snap}); err != nil {
			return err
		}
		return t.deleteIntent(op)
	}); err != nil {
		return sdk.Disk{}, err
	}
	done = true
	s.crashPoint(opCloneShared, "committed")
	return diskInfo(cfg, dst)
}

// cloneFrozen freezes src's overlay into a new base and overlays it twice.
func (s *Store) cloneFrozen(ctx context.Context, cfg *settings, src, dst string, size uint64) (sdk.Disk, error) {
	op, frozen := newID(), newID()
	tmpSrc, tmpDst := tempDiskFile(src, op), tempDiskFile(dst, op)
	in := &intent{ID: op, Op: opClone, Disks: []string{src, dst}, Disk: src, NewDisk: dst, Base: frozen, Temps: []string{tmpSrc, tmpDst}}
	if err := cfg.db.update(ctx, func(t *tx) error {
		if err := checkCloneTx(t, src, dst); err != nil {
			return err
		}
		d, err := t.disk(src)
		if err != nil {
			return err
		}
		if err := checkFreezable(t, d); err != nil {
			return err
		}
		return t.putIntent(in)
	}); err != nil {
		return sdk.Disk{}, err
	}
	s.crashPoint(opClone, "journaled")
	done := false
	defer s.rollbackUnless(ctx, cfg, in, &done)
	if err := s.freeze(cfg, opClone, src, frozen, tmpSrc, int64(size)); err != nil {
		return sdk.Disk{}, err
	}
	if err := createOverlay(cfg, tmpDst, frozen, int64(size)); err != nil {
		return sdk.Disk{}, err
	}
	s.crashPoint(opClone, "clone-created")
	if err := renameDurable(cfg.path(tmpDst), cfg.path(diskFile(dst))); err != nil {
		return sdk.Disk{}, err
	}
	s.crashPoint(opClone, "clone-renamed")
	if err := cfg.db.update(ctx, func(t *tx) error {
		d, err := t.disk(src)
		if err != nil {
			return err
		}
		if err := t.putBase(&baseRecord{ID: frozen, Kind: kindFrozen, Parent: d.Base, Refs: 2}); err != nil {
			return err
		}
		d.Base = frozen
		if err := t.putDisk(d); err != nil {
			return err
		}
		if err := t.putDisk(&diskRecord{ID: dst, Base: frozen, CreatedAt: time.Now().UnixNano(), OriginDisk: src}); err != nil {
			return err
		}
		return t.deleteIntent(op)
	}); err != nil {
		return sdk.Disk{}, err
	}
	done = true
	s.crashPoint(opClone, "committed")
	return diskInfo(cfg, dst)
}

func checkCloneTx(t *tx, src, dst string) error {
	d, err := t.disk(src)
	if err != nil {
		return err
	}
	if d == nil {
		return fmt.Errorf("disk %s: %w", src, sdk.ErrNotFound)
	}
	n, err := t.disk(dst)
	if err != nil {
		return err
	}
	if n != nil {
		return fmt.Errorf("disk %s: %w", dst, sdk.ErrAlreadyExists)
	}
	return nil
}

// maxLayers is the deepest backing chain (overlay included) the qcow2
// package opens.
const maxLayers = 64

// checkFreezable refuses a freeze that would make disk d's chain deeper
// than maxLayers: a freeze adds one layer under the overlay.
func checkFreezable(t *tx, d *diskRecord) error {
	chain, err := t.chain(d.Base)
	if err != nil {
		return err
	}
	if layers := len(chain) + 1; layers+1 > maxLayers {
		return fmt.Errorf("disk %s already has %d layers, the most a backing chain may have is %d: "+
			"another snapshot or clone of its current state would exceed that; export the disk and import the export to flatten it: %w",
			d.ID, layers, maxLayers, sdk.ErrInvalidState)
	}
	return nil
}
