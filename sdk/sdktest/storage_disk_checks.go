package sdktest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/boxctl/boxctl/sdk"
)

// diskChecks is the DiskBackend suite, in the order it runs.
func diskChecks() []storageCheck {
	return []storageCheck{
		{"Info", nil, checkInfo},
		{"CreateDescribesDisk", nil, checkCreateDescribesDisk},
		{"GetMatchesCreate", nil, checkGetMatchesCreate},
		{"ListDisks", nil, checkListDisks},
		{"DisksAreIndependent", nil, checkDisksAreIndependent},
		{"CreateExisting", nil, checkCreateExisting},
		{"MissingDisk", nil, checkMissingDisk},
		{"InvalidDiskIDs", nil, checkInvalidDiskIDs},
		{"InvalidSizeOrFilesystem", nil, checkInvalidSizeOrFilesystem},
		{"RemoveDeletesDisk", nil, checkRemoveDeletesDisk},
		{"RemoveIdempotent", nil, checkRemoveIdempotent},
		{"RemovedIDReusable", nil, checkRemovedIDReusable},
		{"ResizeGrows", []capability{capResize}, checkResizeGrows},
		{"ResizeRefusesShrink", []capability{capResize}, checkResizeRefusesShrink},
		{"ExportStandalone", []capability{capExport}, checkExportStandalone},
		{"ExportRefusesExistingDest", []capability{capExport}, checkExportRefusesExistingDest},
		{"ExportUnknownFormat", []capability{capExport}, checkExportUnknownFormat},
		{"ImportRoundTrip", []capability{capExport, capImport}, checkImportRoundTrip},
		{"ImportExisting", []capability{capExport, capImport}, checkImportExisting},
		{"ImportRefusesJunk", []capability{capImport}, checkImportRefusesJunk},
		{"ConcurrentDisks", nil, checkConcurrentDisks},
	}
}

// checkInfo: Info names the plugin and its protocol versions, and the
// capabilities agree with each other.
func checkInfo(e *storageEnv) {
	if e.info.Name == "" || len(e.info.ProtocolVersions) == 0 {
		e.t.Fatalf("Info = %+v; want a name and protocol versions", e.info)
	}
	if e.caps.CloneO1 && !e.caps.Clone {
		e.t.Errorf("the plugin declares CloneO1 but does not implement sdk.Cloner")
	}
	if e.caps.Clone && !e.caps.Snapshots {
		e.t.Errorf("the plugin implements sdk.Cloner but serves no SnapshotBackend")
	}
}

// checkCreateDescribesDisk: CreateDisk returns the disk's ID, an existing
// path, a format and at least the requested size.
func checkCreateDescribesDisk(e *storageEnv) {
	d := e.create("disk-a")
	if d.ID != "disk-a" || d.Path == "" || d.Format == "" || d.VirtualSize < e.suite.size {
		e.t.Fatalf("CreateDisk returned %+v; want ID, Path, Format and VirtualSize >= %d", d, e.suite.size)
	}
	if _, err := os.Stat(d.Path); err != nil {
		e.t.Fatalf("the disk's path: %v", err)
	}
}

// checkGetMatchesCreate: GetDisk describes the disk as CreateDisk did.
func checkGetMatchesCreate(e *storageEnv) {
	created := e.create("disk-a")
	got := e.get("disk-a")
	if got.ID != "disk-a" || got.Path != created.Path || got.VirtualSize != created.VirtualSize || got.Format != created.Format {
		e.t.Fatalf("GetDisk = %+v, CreateDisk returned %+v", got, created)
	}
}

// checkListDisks: a new store lists nothing, then exactly the disks made.
func checkListDisks(e *storageEnv) {
	e.wantIDs("in a new store")
	e.create("disk-a")
	e.create("disk-b")
	e.wantIDs("after two creates", "disk-a", "disk-b")
}

// checkDisksAreIndependent: what is written to one disk does not show in
// another.
func checkDisksAreIndependent(e *storageEnv) {
	e.create("disk-a")
	e.create("disk-b")
	e.fill("disk-a", regionA, 0xa1)
	e.fill("disk-b", regionA, 0xb1)
	e.expect("disk-a", regionA, 0xa1)
	e.expect("disk-b", regionA, 0xb1)
}

// checkCreateExisting: creating a disk that exists is ErrAlreadyExists and
// leaves it as it was.
func checkCreateExisting(e *storageEnv) {
	e.create("disk-a")
	e.fill("disk-a", regionA, 0x11)
	_, err := e.disks.CreateDisk(e.ctx, sdk.CreateDiskRequest{ID: "disk-a", Size: e.suite.size})
	e.wantErr("CreateDisk of an existing disk", err, sdk.ErrAlreadyExists)
	e.expect("disk-a", regionA, 0x11)
}

// checkMissingDisk: the DiskBackend calls on a disk that does not exist
// are ErrNotFound.
func checkMissingDisk(e *storageEnv) {
	_, err := e.disks.GetDisk(e.ctx, "missing")
	e.wantErr("GetDisk", err, sdk.ErrNotFound)
	if e.caps.Resize {
		_, err = e.disks.Resize(e.ctx, "missing", e.suite.size*2)
		e.wantErr("Resize", err, sdk.ErrNotFound)
	}
	if e.caps.Export {
		_, err = e.disks.Export(e.ctx, sdk.ExportRequest{ID: "missing", Dest: filepath.Join(e.t.TempDir(), "out")})
		e.wantErr("Export", err, sdk.ErrNotFound)
	}
}

// checkInvalidDiskIDs: IDs outside [a-z0-9][a-z0-9_.-]{0,127} are
// ErrInvalidArgument and create nothing.
func checkInvalidDiskIDs(e *storageEnv) {
	for _, id := range []string{"", "Upper", "../escape", "a/b", ".hidden", strings.Repeat("x", 200)} {
		_, err := e.disks.CreateDisk(e.ctx, sdk.CreateDiskRequest{ID: id, Size: e.suite.size})
		e.wantErr(fmt.Sprintf("CreateDisk(%q)", id), err, sdk.ErrInvalidArgument)
	}
	e.wantIDs("after refused creates")
}

// checkInvalidSizeOrFilesystem: a size of 0 and an unknown filesystem are
// refused and create nothing.
func checkInvalidSizeOrFilesystem(e *storageEnv) {
	_, err := e.disks.CreateDisk(e.ctx, sdk.CreateDiskRequest{ID: "zero", Size: 0})
	e.wantErr("CreateDisk of size 0", err, sdk.ErrInvalidArgument)
	_, err = e.disks.CreateDisk(e.ctx, sdk.CreateDiskRequest{ID: "fs", Size: e.suite.size, Filesystem: "no-such-fs"})
	e.wantErr("CreateDisk with an unknown filesystem", err, sdk.ErrInvalidArgument, sdk.ErrUnsupported)
	e.wantIDs("after refused creates")
}

// checkRemoveDeletesDisk: a removed disk is gone: not found, not listed,
// its file deleted.
func checkRemoveDeletesDisk(e *storageEnv) {
	d := e.create("disk-a")
	e.fill("disk-a", regionA, 0x5a)
	e.remove("disk-a")
	_, err := e.disks.GetDisk(e.ctx, "disk-a")
	e.wantErr("GetDisk after RemoveDisk", err, sdk.ErrNotFound)
	if _, err := os.Stat(d.Path); !errors.Is(err, os.ErrNotExist) {
		e.t.Fatalf("the removed disk's file %s: %v; want it gone", d.Path, err)
	}
	e.wantIDs("after RemoveDisk")
}

// checkRemoveIdempotent: removing a removed disk, or one that never
// existed, succeeds.
func checkRemoveIdempotent(e *storageEnv) {
	e.create("disk-a")
	e.remove("disk-a")
	e.remove("disk-a")
	e.remove("never-existed")
	e.wantIDs("after removes")
}

// checkRemovedIDReusable: the ID of a removed disk can be used again, and
// the new disk does not see the old one's data.
func checkRemovedIDReusable(e *storageEnv) {
	e.create("disk-a")
	e.fill("disk-a", regionA, 0x5a)
	e.remove("disk-a")
	e.create("disk-a")
	if e.reads("disk-a", regionA, 0x5a) {
		e.t.Fatal("a re-created disk still holds the removed disk's data")
	}
}

// checkResizeGrows: Resize grows the disk, keeps its data and makes the
// new range writable.
func checkResizeGrows(e *storageEnv) {
	size := e.suite.size
	e.create("disk-a")
	e.fill("disk-a", regionA, 0x77)
	e.logf("Resize disk-a to %s", sizeString(size*2))
	d, err := e.disks.Resize(e.ctx, "disk-a", size*2)
	if err != nil || d.VirtualSize < size*2 {
		e.t.Fatalf("Resize to %d = %+v, %v", size*2, d, err)
	}
	if got := e.get("disk-a").VirtualSize; got < size*2 {
		e.t.Fatalf("after Resize GetDisk VirtualSize = %d", got)
	}
	e.expect("disk-a", regionA, 0x77)
	e.fillAt(e.get("disk-a"), int64(size*2)-regionLen, regionLen, 0x78)
}

// checkResizeRefusesShrink: shrinking is ErrInvalidArgument and changes
// nothing.
func checkResizeRefusesShrink(e *storageEnv) {
	size := e.suite.size
	e.create("disk-a")
	e.fill("disk-a", regionA, 0x77)
	_, err := e.disks.Resize(e.ctx, "disk-a", size/2)
	e.wantErr("Resize to a smaller size", err, sdk.ErrInvalidArgument)
	if got := e.get("disk-a").VirtualSize; got < size {
		e.t.Fatalf("after a refused shrink VirtualSize = %d, want %d", got, size)
	}
	e.expect("disk-a", regionA, 0x77)
}

// checkExportStandalone: Export writes a standalone file of each format
// with the disk's content, and the disk stays usable.
func checkExportStandalone(e *storageEnv) {
	e.create("disk-a")
	e.fill("disk-a", regionA, 0x42)
	dir := e.t.TempDir()
	for _, format := range []string{"qcow2", "raw"} {
		dest := filepath.Join(dir, "export."+format)
		d := e.export("disk-a", dest, format)
		if d.Format != format || len(d.BackingChain) != 0 || d.VirtualSize < e.suite.size {
			e.t.Fatalf("Export %s returned %+v; want a standalone %s file of the disk's size", format, d, format)
		}
		e.expectDisk(sdk.Disk{ID: "export " + format, Path: dest, Format: format}, regionA, 0x42)
	}
	e.fill("disk-a", regionA, 0x43)
	e.expect("disk-a", regionA, 0x43)
}

// checkExportRefusesExistingDest: Export never replaces a file.
func checkExportRefusesExistingDest(e *storageEnv) {
	e.create("disk-a")
	dest := filepath.Join(e.t.TempDir(), "taken")
	if err := os.WriteFile(dest, []byte("keep"), 0o644); err != nil {
		e.t.Fatal(err)
	}
	for _, format := range []string{"qcow2", "raw"} {
		_, err := e.disks.Export(e.ctx, sdk.ExportRequest{ID: "disk-a", Dest: dest, Format: format})
		e.wantErr("Export "+format+" onto an existing file", err, sdk.ErrAlreadyExists)
	}
	if b, err := os.ReadFile(dest); err != nil || string(b) != "keep" {
		e.t.Fatalf("the existing file was changed: %q, %v", b, err)
	}
}

// checkExportUnknownFormat: an unknown format is refused.
func checkExportUnknownFormat(e *storageEnv) {
	e.create("disk-a")
	dest := filepath.Join(e.t.TempDir(), "x")
	_, err := e.disks.Export(e.ctx, sdk.ExportRequest{ID: "disk-a", Dest: dest, Format: "no-such-format"})
	e.wantErr("Export to an unknown format", err, sdk.ErrInvalidArgument, sdk.ErrUnsupported)
	if _, err := os.Stat(dest); !errors.Is(err, os.ErrNotExist) {
		e.t.Fatalf("a refused export left %s: %v", dest, err)
	}
}

// exportFile exports disk id in the default format to a new file.
func (e *storageEnv) exportFile(id string) string {
	e.t.Helper()
	dest := filepath.Join(e.t.TempDir(), "export.img")
	e.export(id, dest, "")
	return dest
}

// checkImportRoundTrip: an export validates without problems and imports
// as an independent disk with the same content.
func checkImportRoundTrip(e *storageEnv) {
	e.create("disk-a")
	e.fill("disk-a", regionA, 0x24)
	dest := e.exportFile("disk-a")
	v, err := e.disks.Validate(e.ctx, dest, 0)
	if err != nil || len(v.Problems) != 0 {
		e.t.Fatalf("Validate of an export = %+v, %v; want no problems", v, err)
	}
	e.logf("Import %s as imported", dest)
	d, err := e.disks.Import(e.ctx, sdk.ImportRequest{ID: "imported", Source: dest})
	if err != nil || d.ID != "imported" {
		e.t.Fatalf("Import = %+v, %v", d, err)
	}
	e.expect("imported", regionA, 0x24)
	e.fill("imported", regionA, 0x25)
	e.expect("disk-a", regionA, 0x24)
	e.wantIDs("after Import", "disk-a", "imported")
}

// checkImportExisting: importing onto an existing disk is
// ErrAlreadyExists and leaves it alone.
func checkImportExisting(e *storageEnv) {
	e.create("disk-a")
	e.fill("disk-a", regionA, 0x24)
	dest := e.exportFile("disk-a")
	e.create("disk-b")
	_, err := e.disks.Import(e.ctx, sdk.ImportRequest{ID: "disk-b", Source: dest})
	e.wantErr("Import onto an existing disk", err, sdk.ErrAlreadyExists)
	if e.reads("disk-b", regionA, 0x24) {
		e.t.Fatal("a refused import changed the existing disk")
	}
}

// checkImportRefusesJunk: a file that is no disk image has problems, is
// refused with ErrInvalidArgument and creates nothing.
func checkImportRefusesJunk(e *storageEnv) {
	junk := filepath.Join(e.t.TempDir(), "junk")
	if err := os.WriteFile(junk, []byte(strings.Repeat("not a disk image\n", 4096)), 0o644); err != nil {
		e.t.Fatal(err)
	}
	v, err := e.disks.Validate(e.ctx, junk, 0)
	if err != nil || len(v.Problems) == 0 {
		e.t.Fatalf("Validate of junk = %+v, %v; want problems", v, err)
	}
	_, err = e.disks.Import(e.ctx, sdk.ImportRequest{ID: "junk", Source: junk})
	e.wantErr("Import of junk", err, sdk.ErrInvalidArgument)
	_, err = e.disks.GetDisk(e.ctx, "junk")
	e.wantErr("GetDisk after a refused import", err, sdk.ErrNotFound)
	e.wantIDs("after a refused import")
}

// checkConcurrentDisks: creates, writes and removes of different disks at
// the same time all take effect.
func checkConcurrentDisks(e *storageEnv) {
	const n = 6
	e.logf("concurrently: CreateDisk disk-0..disk-%d, write 1..%d into each, RemoveDisk the odd ones", n-1, n)
	e.concurrently(n, func(i int) error {
		id := fmt.Sprintf("disk-%d", i)
		if _, err := e.disks.CreateDisk(e.ctx, sdk.CreateDiskRequest{ID: id, Size: e.suite.size}); err != nil {
			return fmt.Errorf("create %s: %w", id, err)
		}
		d, err := e.disks.GetDisk(e.ctx, id)
		if err == nil {
			err = e.suite.content.Fill(e.ctx, d, regionA, regionLen, byte(i+1))
		}
		if err == nil && i%2 == 1 {
			err = e.disks.RemoveDisk(e.ctx, id)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", id, err)
		}
		return nil
	})
	e.wantIDs("after the concurrent operations", "disk-0", "disk-2", "disk-4")
	for _, i := range []int{0, 2, 4} {
		e.expect(fmt.Sprintf("disk-%d", i), regionA, byte(i+1))
	}
}
