package sdktest

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/boxctl/boxctl/sdk"
)

// snapshotChecks is the SnapshotBackend suite, in the order it runs.
func snapshotChecks() []storageCheck {
	snaps := []capability{capSnapshots}
	clones := []capability{capSnapshots, capClone}
	return []storageCheck{
		{"SnapshotDescribesItself", snaps, checkSnapshotDescribesItself},
		{"ListOldestFirst", snaps, checkListOldestFirst},
		{"SnapshotNameTaken", snaps, checkSnapshotNameTaken},
		{"SnapshotNamesPerDisk", snaps, checkSnapshotNamesPerDisk},
		{"SnapshotMissingDisk", snaps, checkSnapshotMissingDisk},
		{"RestoreDiscardsChanges", snaps, checkRestoreDiscardsChanges},
		{"RestoreKeepsSnapshots", snaps, checkRestoreKeepsSnapshots},
		{"RestoreMissingSnapshot", snaps, checkRestoreMissingSnapshot},
		{"RemoveSnapshotKeepsDisk", snaps, checkRemoveSnapshotKeepsDisk},
		{"RemoveSnapshotTwice", snaps, checkRemoveSnapshotTwice},
		{"RemoveRestoredSnapshot", snaps, checkRemoveRestoredSnapshot},
		{"RemoveDiskRemovesSnapshots", snaps, checkRemoveDiskRemovesSnapshots},
		{"CloneCurrentState", clones, checkCloneCurrentState},
		{"CloneOntoExisting", clones, checkCloneOntoExisting},
		{"CloneOfClone", clones, checkCloneOfClone},
		{"CloneMissingDisk", clones, checkCloneMissingDisk},
		{"CloneFromSnapshot", clones, checkCloneFromSnapshot},
		{"CloneFromMissingSnapshot", clones, checkCloneFromMissingSnapshot},
		{"SnapshotInUseByClone", clones, checkSnapshotInUseByClone},
		{"RemoveSourceKeepsClones", clones, checkRemoveSourceKeepsClones},
		{"ConcurrentSnapshotsAndClones", clones, checkConcurrentSnapshotsAndClones},
		{"ExportSnapshot", []capability{capSnapshots, capExport, capTransfer}, checkExportSnapshot},
		{"ImportSnapshot", []capability{capSnapshots, capExport, capImport, capTransfer}, checkImportSnapshot},
	}
}

// checkSnapshotDescribesItself: CreateSnapshot returns the disk, the name,
// when it was taken and the disk's size.
func checkSnapshotDescribesItself(e *storageEnv) {
	e.create("disk-a")
	e.fill("disk-a", regionA, 0x01)
	before := time.Now().Add(-time.Minute)
	sn := e.snapshot("disk-a", "s1")
	if sn.DiskID != "disk-a" || sn.Name != "s1" || sn.CreatedAt.Before(before) || sn.VirtualSize < e.suite.size {
		e.t.Fatalf("CreateSnapshot returned %+v", sn)
	}
	e.expect("disk-a", regionA, 0x01)
}

// checkListOldestFirst: a new disk has no snapshots; ListSnapshots lists
// them oldest first, not by name.
func checkListOldestFirst(e *storageEnv) {
	e.create("disk-a")
	e.wantSnapshots("on a new disk", "disk-a")
	e.snapshot("disk-a", "s1")
	e.fill("disk-a", regionA, 0x01)
	e.snapshot("disk-a", "s2")
	e.snapshot("disk-a", "s0")
	list, err := e.snaps.ListSnapshots(e.ctx, "disk-a")
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 1; i < len(list); i++ {
		if list[i].CreatedAt.Before(list[i-1].CreatedAt) {
			e.t.Fatalf("ListSnapshots not oldest first: %+v", list)
		}
	}
	e.wantSnapshots("after three snapshots", "disk-a", "s1", "s2", "s0")
	e.expect("disk-a", regionA, 0x01)
}

// checkSnapshotNameTaken: a name in use on the disk is ErrAlreadyExists.
func checkSnapshotNameTaken(e *storageEnv) {
	e.create("disk-a")
	e.snapshot("disk-a", "s1")
	_, err := e.snaps.CreateSnapshot(e.ctx, "disk-a", "s1")
	e.wantErr("CreateSnapshot with a taken name", err, sdk.ErrAlreadyExists)
	e.wantSnapshots("after a refused snapshot", "disk-a", "s1")
}

// checkSnapshotNamesPerDisk: snapshots belong to their disk; the same name
// can be used on another.
func checkSnapshotNamesPerDisk(e *storageEnv) {
	e.create("disk-a")
	e.snapshot("disk-a", "s1")
	e.create("disk-b")
	e.wantSnapshots("on another disk", "disk-b")
	e.snapshot("disk-b", "s1")
	e.wantSnapshots("after a snapshot of disk-b", "disk-a", "s1")
}

// checkSnapshotMissingDisk: the SnapshotBackend calls on a disk that does
// not exist are ErrNotFound.
func checkSnapshotMissingDisk(e *storageEnv) {
	_, err := e.snaps.CreateSnapshot(e.ctx, "missing", "s1")
	e.wantErr("CreateSnapshot", err, sdk.ErrNotFound)
	_, err = e.snaps.ListSnapshots(e.ctx, "missing")
	e.wantErr("ListSnapshots", err, sdk.ErrNotFound)
	_, err = e.snaps.RestoreSnapshot(e.ctx, "missing", "s1")
	e.wantErr("RestoreSnapshot", err, sdk.ErrNotFound)
	err = e.snaps.RemoveSnapshot(e.ctx, "missing", "s1")
	e.wantErr("RemoveSnapshot", err, sdk.ErrNotFound)
}

// checkRestoreDiscardsChanges: restoring a snapshot brings back its
// content and discards everything written after it, in every region.
func checkRestoreDiscardsChanges(e *storageEnv) {
	e.create("disk-a")
	e.fill("disk-a", regionA, 0xa0)
	e.snapshot("disk-a", "s1")
	e.fill("disk-a", regionA, 0xa1)
	e.fill("disk-a", regionB, 0xb1)
	e.snapshot("disk-a", "s2")
	e.fill("disk-a", regionA, 0xa2)

	e.restore("disk-a", "s1")
	e.expect("disk-a", regionA, 0xa0)
	if e.reads("disk-a", regionB, 0xb1) {
		e.t.Fatal("restoring s1 kept data written after it")
	}
	e.fill("disk-a", regionA, 0xa3)
	e.restore("disk-a", "s2")
	e.expect("disk-a", regionA, 0xa1)
	e.expect("disk-a", regionB, 0xb1)
}

// checkRestoreKeepsSnapshots: a snapshot survives being restored, as do
// the snapshots after it, and can be restored again.
func checkRestoreKeepsSnapshots(e *storageEnv) {
	e.create("disk-a")
	e.fill("disk-a", regionA, 0xa0)
	e.snapshot("disk-a", "s1")
	e.fill("disk-a", regionA, 0xa1)
	e.snapshot("disk-a", "s2")
	e.restore("disk-a", "s1")
	e.fill("disk-a", regionA, 0xa3)
	e.restore("disk-a", "s1")
	e.expect("disk-a", regionA, 0xa0)
	e.wantSnapshots("after restores", "disk-a", "s1", "s2")
}

// checkRestoreMissingSnapshot: restoring a name that is no snapshot is
// ErrNotFound and leaves the disk alone.
func checkRestoreMissingSnapshot(e *storageEnv) {
	e.create("disk-a")
	e.snapshot("disk-a", "s1")
	e.fill("disk-a", regionA, 0xa0)
	_, err := e.snaps.RestoreSnapshot(e.ctx, "disk-a", "nope")
	e.wantErr("RestoreSnapshot of a missing snapshot", err, sdk.ErrNotFound)
	e.expect("disk-a", regionA, 0xa0)
}

// checkRemoveSnapshotKeepsDisk: removing a snapshot leaves the disk's
// content and the later snapshots whole.
func checkRemoveSnapshotKeepsDisk(e *storageEnv) {
	e.create("disk-a")
	e.fill("disk-a", regionA, 0x10)
	e.snapshot("disk-a", "s1")
	e.fill("disk-a", regionA, 0x20)
	e.snapshot("disk-a", "s2")
	e.fill("disk-a", regionA, 0x30)
	e.removeSnapshot("disk-a", "s1")
	e.wantSnapshots("after removing s1", "disk-a", "s2")
	e.expect("disk-a", regionA, 0x30)
	e.restore("disk-a", "s2")
	e.expect("disk-a", regionA, 0x20)
}

// checkRemoveSnapshotTwice: a removed snapshot is gone: removing or
// restoring it is ErrNotFound, and its name can be used again.
func checkRemoveSnapshotTwice(e *storageEnv) {
	e.create("disk-a")
	e.snapshot("disk-a", "s1")
	e.removeSnapshot("disk-a", "s1")
	err := e.snaps.RemoveSnapshot(e.ctx, "disk-a", "s1")
	e.wantErr("RemoveSnapshot twice", err, sdk.ErrNotFound)
	_, err = e.snaps.RestoreSnapshot(e.ctx, "disk-a", "s1")
	e.wantErr("RestoreSnapshot of a removed snapshot", err, sdk.ErrNotFound)
	e.snapshot("disk-a", "s1")
	e.wantSnapshots("after re-using the name", "disk-a", "s1")
}

// checkRemoveRestoredSnapshot: the snapshot a disk was restored from can
// be removed; the disk keeps the restored content.
func checkRemoveRestoredSnapshot(e *storageEnv) {
	e.create("disk-a")
	e.fill("disk-a", regionA, 0x20)
	e.snapshot("disk-a", "s2")
	e.fill("disk-a", regionA, 0x30)
	e.restore("disk-a", "s2")
	e.removeSnapshot("disk-a", "s2")
	e.expect("disk-a", regionA, 0x20)
	e.wantSnapshots("after removing the restored snapshot", "disk-a")
}

// checkRemoveDiskRemovesSnapshots: a disk's snapshots go with it and do
// not come back with a new disk of the same ID.
func checkRemoveDiskRemovesSnapshots(e *storageEnv) {
	e.create("disk-a")
	e.snapshot("disk-a", "s1")
	e.snapshot("disk-a", "s2")
	e.remove("disk-a")
	_, err := e.snaps.ListSnapshots(e.ctx, "disk-a")
	e.wantErr("ListSnapshots of a removed disk", err, sdk.ErrNotFound)
	e.create("disk-a")
	e.wantSnapshots("on a re-created disk", "disk-a")
}

// checkCloneCurrentState: a clone has the source's current content, and
// writes to either do not show in the other.
func checkCloneCurrentState(e *storageEnv) {
	e.create("src")
	e.fill("src", regionA, 0x51)
	d := e.clone("src", "dst", "")
	if d.ID != "dst" || d.VirtualSize < e.suite.size {
		e.t.Fatalf("Clone returned %+v", d)
	}
	e.expect("dst", regionA, 0x51)
	e.fill("src", regionA, 0x52)
	e.fill("dst", regionB, 0x62)
	e.expect("dst", regionA, 0x51)
	e.expect("src", regionA, 0x52)
	if e.reads("src", regionB, 0x62) {
		e.t.Fatal("a write into the clone shows in the source")
	}
	e.wantIDs("after Clone", "dst", "src")
}

// checkCloneOntoExisting: cloning onto an existing disk, or a disk onto
// itself, is refused and changes neither.
func checkCloneOntoExisting(e *storageEnv) {
	e.create("src")
	e.fill("src", regionA, 0x51)
	e.create("dst")
	e.fill("dst", regionA, 0x61)
	_, err := e.snaps.Clone(e.ctx, sdk.CloneRequest{ID: "src", NewID: "dst"})
	e.wantErr("Clone onto an existing disk", err, sdk.ErrAlreadyExists)
	_, err = e.snaps.Clone(e.ctx, sdk.CloneRequest{ID: "src", NewID: "src"})
	e.wantErr("Clone onto itself", err, sdk.ErrAlreadyExists, sdk.ErrInvalidArgument)
	e.expect("src", regionA, 0x51)
	e.expect("dst", regionA, 0x61)
}

// checkCloneOfClone: clones of clones, and of untouched clones, are
// independent copies too.
func checkCloneOfClone(e *storageEnv) {
	e.create("src")
	e.fill("src", regionA, 0x51)
	e.clone("src", "dst", "")
	e.fill("dst", regionB, 0x62)
	e.clone("dst", "dst2", "")
	e.expect("dst2", regionA, 0x51)
	e.expect("dst2", regionB, 0x62)
	e.clone("dst2", "dst3", "")
	e.fill("dst3", regionA, 0x71)
	e.expect("dst2", regionA, 0x51)
	e.expect("dst", regionA, 0x51)
	e.expect("src", regionA, 0x51)
}

// checkCloneMissingDisk: cloning a disk that does not exist is
// ErrNotFound and creates nothing.
func checkCloneMissingDisk(e *storageEnv) {
	_, err := e.snaps.Clone(e.ctx, sdk.CloneRequest{ID: "missing", NewID: "new"})
	e.wantErr("Clone", err, sdk.ErrNotFound)
	e.wantIDs("after a refused clone")
}

// checkCloneFromSnapshot: a clone from a snapshot has the snapshot's
// content, not the source's current one.
func checkCloneFromSnapshot(e *storageEnv) {
	e.create("src")
	e.fill("src", regionA, 0x81)
	e.snapshot("src", "s1")
	e.fill("src", regionA, 0x82)
	e.clone("src", "dst", "s1")
	e.expect("dst", regionA, 0x81)
	e.expect("src", regionA, 0x82)
	e.wantSnapshots("on the clone", "dst")
}

// checkCloneFromMissingSnapshot: cloning from a name that is no snapshot
// is ErrNotFound and creates nothing.
func checkCloneFromMissingSnapshot(e *storageEnv) {
	e.create("src")
	_, err := e.snaps.Clone(e.ctx, sdk.CloneRequest{ID: "src", NewID: "other", Snapshot: "nope"})
	e.wantErr("Clone from a missing snapshot", err, sdk.ErrNotFound)
	e.wantIDs("after a refused clone", "src")
}

// checkSnapshotInUseByClone: a snapshot a clone depends on cannot be
// removed (ErrInvalidState, naming the clone) until the clone is gone.
func checkSnapshotInUseByClone(e *storageEnv) {
	e.create("src")
	e.fill("src", regionA, 0x81)
	e.snapshot("src", "s1")
	e.fill("src", regionA, 0x82)
	e.clone("src", "dst", "s1")
	err := e.snaps.RemoveSnapshot(e.ctx, "src", "s1")
	e.wantErr("RemoveSnapshot while a clone depends on it", err, sdk.ErrInvalidState)
	if !strings.Contains(err.Error(), "dst") {
		e.t.Errorf("the refusal %q does not name the dependent disk dst", err)
	}
	e.wantSnapshots("after a refused remove", "src", "s1")
	e.expect("dst", regionA, 0x81)
	e.remove("dst")
	e.removeSnapshot("src", "s1")
	e.expect("src", regionA, 0x82)
}

// checkRemoveSourceKeepsClones: removing a disk leaves the clones made
// from it (from a snapshot and from its current state) whole.
func checkRemoveSourceKeepsClones(e *storageEnv) {
	e.create("src")
	e.fill("src", regionA, 0x91)
	e.snapshot("src", "s1")
	e.fill("src", regionA, 0x92)
	e.clone("src", "from-snap", "s1")
	e.clone("src", "from-now", "")
	e.remove("src")
	e.expect("from-snap", regionA, 0x91)
	e.expect("from-now", regionA, 0x92)
	e.fill("from-now", regionA, 0x93)
	e.expect("from-snap", regionA, 0x91)
	e.remove("from-snap")
	e.expect("from-now", regionA, 0x93)
}

// checkConcurrentSnapshotsAndClones: snapshots and clones of different
// disks at the same time all take effect.
func checkConcurrentSnapshotsAndClones(e *storageEnv) {
	const n = 4
	for i := range n {
		id := fmt.Sprintf("src-%d", i)
		e.create(id)
		e.fill(id, regionA, byte(0x40+i))
	}
	e.logf("concurrently for src-0..src-%d: CreateSnapshot s, Clone from s to <src>-clone, Clone to <src>-now", n-1)
	e.concurrently(n, func(i int) error {
		id := fmt.Sprintf("src-%d", i)
		if _, err := e.snaps.CreateSnapshot(e.ctx, id, "s"); err != nil {
			return fmt.Errorf("snapshot %s: %w", id, err)
		}
		if _, err := e.snaps.Clone(e.ctx, sdk.CloneRequest{ID: id, NewID: id + "-clone", Snapshot: "s"}); err != nil {
			return fmt.Errorf("clone %s from s: %w", id, err)
		}
		if _, err := e.snaps.Clone(e.ctx, sdk.CloneRequest{ID: id, NewID: id + "-now"}); err != nil {
			return fmt.Errorf("clone %s: %w", id, err)
		}
		return nil
	})
	for i := range n {
		id := fmt.Sprintf("src-%d", i)
		e.expect(id+"-clone", regionA, byte(0x40+i))
		e.expect(id+"-now", regionA, byte(0x40+i))
	}
}

// checkExportSnapshot: Export with a snapshot writes that snapshot's
// content, not the disk's current state; a missing snapshot is
// ErrNotFound.
func checkExportSnapshot(e *storageEnv) {
	e.create("disk-a")
	e.fill("disk-a", regionA, 0x31)
	e.snapshot("disk-a", "s1")
	e.fill("disk-a", regionA, 0x32)
	dest := filepath.Join(e.t.TempDir(), "s1.img")
	e.logf("Export disk-a snapshot s1 to %s", dest)
	d, err := e.disks.Export(e.ctx, sdk.ExportRequest{ID: "disk-a", Dest: dest, Snapshot: "s1"})
	if err != nil || len(d.BackingChain) != 0 {
		e.t.Fatalf("Export of snapshot s1 = %+v, %v; want a standalone file", d, err)
	}
	e.expectDisk(sdk.Disk{ID: "export of s1", Path: dest, Format: d.Format}, regionA, 0x31)
	e.expect("disk-a", regionA, 0x32)
	_, err = e.disks.Export(e.ctx, sdk.ExportRequest{ID: "disk-a", Dest: filepath.Join(e.t.TempDir(), "x"), Snapshot: "nope"})
	e.wantErr("Export of a missing snapshot", err, sdk.ErrNotFound)
}

// checkImportSnapshot: Import with a snapshot adds it to an existing disk
// with the given time, leaves the disk's current state alone, and restores
// like any snapshot; a taken name is ErrAlreadyExists, a missing disk
// ErrNotFound.
func checkImportSnapshot(e *storageEnv) {
	e.create("disk-a")
	e.fill("disk-a", regionA, 0x41)
	src := e.exportFile("disk-a")
	e.create("disk-b")
	e.fill("disk-b", regionA, 0x42)
	at := time.Unix(1700000000, 0).UTC()
	e.logf("Import %s as snapshot s1 of disk-b", src)
	if _, err := e.disks.Import(e.ctx, sdk.ImportRequest{ID: "disk-b", Source: src, Snapshot: "s1", SnapshotCreatedAt: at}); err != nil {
		e.t.Fatalf("Import as a snapshot: %v", err)
	}
	snaps, err := e.snaps.ListSnapshots(e.ctx, "disk-b")
	if err != nil || len(snaps) != 1 || snaps[0].Name != "s1" || !snaps[0].CreatedAt.Equal(at) {
		e.t.Fatalf("ListSnapshots after the import = %+v, %v; want s1 taken at %s", snaps, err, at)
	}
	e.expect("disk-b", regionA, 0x42)
	_, err = e.disks.Import(e.ctx, sdk.ImportRequest{ID: "disk-b", Source: src, Snapshot: "s1"})
	e.wantErr("Import onto a taken snapshot name", err, sdk.ErrAlreadyExists)
	_, err = e.disks.Import(e.ctx, sdk.ImportRequest{ID: "no-such-disk", Source: src, Snapshot: "s1"})
	e.wantErr("Import as a snapshot of a missing disk", err, sdk.ErrNotFound)
	e.restore("disk-b", "s1")
	e.expect("disk-b", regionA, 0x41)
	e.wantIDs("after snapshot imports", "disk-a", "disk-b")
}
