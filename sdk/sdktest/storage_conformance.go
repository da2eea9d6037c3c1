package sdktest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boxctl/boxctl/sdk"
)

// NewStorageFunc returns a fresh, empty, configured storage plugin (both
// roles, served however the caller likes: in-process through Serve, or a
// real binary). Every conformance subtest calls it once, so subtests never
// see each other's disks. The SnapshotBackend may be nil for a plugin that
// does not advertise "snapshots".
type NewStorageFunc func(t *testing.T) (sdk.DiskBackend, sdk.SnapshotBackend)

// DiskContent reads and writes a disk's guest-visible content, so the
// conformance suite can check what snapshots, clones and exports contain
// without knowing the plugin's file format.
type DiskContent interface {
	// Fill writes length bytes of pattern at guest offset off of the disk.
	Fill(ctx context.Context, disk sdk.Disk, off, length int64, pattern byte) error
	// Expect returns an error unless [off, off+length) reads as pattern.
	Expect(ctx context.Context, disk sdk.Disk, off, length int64, pattern byte) error
}

// QemuIO is a DiskContent that uses QEMU's qemu-io tool (qemu-utils),
// which reads and writes every format QEMU knows, through the backing
// chain, as a VM would.
type QemuIO struct {
	// Path of qemu-io; "" looks it up in $PATH.
	Path string
}

// Fill implements DiskContent.
func (q QemuIO) Fill(ctx context.Context, disk sdk.Disk, off, length int64, pattern byte) error {
	return q.run(ctx, disk, false, fmt.Sprintf("write -P %d %d %d", pattern, off, length))
}

// Expect implements DiskContent.
func (q QemuIO) Expect(ctx context.Context, disk sdk.Disk, off, length int64, pattern byte) error {
	return q.run(ctx, disk, true, fmt.Sprintf("read -P %d %d %d", pattern, off, length))
}

func (q QemuIO) run(ctx context.Context, disk sdk.Disk, readOnly bool, command string) error {
	bin := q.Path
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("qemu-io"); err != nil {
			return fmt.Errorf("qemu-io not found (install qemu-utils): %w", err)
		}
	}
	args := []string{"-f", disk.Format}
	if readOnly {
		args = append(args, "-r")
	}
	args = append(args, "-c", command, disk.Path)
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil || strings.Contains(string(out), "failed") || strings.Contains(string(out), "error") {
		return fmt.Errorf("qemu-io %s on %s: %v: %s", command, disk.Path, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// StorageOption configures the storage conformance suites.
type StorageOption func(*storageSuite)

// WithDiskContent sets how the suite reads and writes disk content
// (default QemuIO{}).
func WithDiskContent(c DiskContent) StorageOption { return func(s *storageSuite) { s.content = c } }

// WithDiskSize sets the size of the disks the suite creates (default 64 MiB).
func WithDiskSize(n uint64) StorageOption { return func(s *storageSuite) { s.size = n } }

type storageSuite struct {
	newBackend NewStorageFunc
	content    DiskContent
	size       uint64
}

func newStorageSuite(t *testing.T, nb NewStorageFunc, opts []StorageOption) *storageSuite {
	t.Helper()
	s := &storageSuite{newBackend: nb, size: 64 << 20}
	for _, o := range opts {
		o(s)
	}
	if s.content == nil {
		if _, err := exec.LookPath("qemu-io"); err != nil {
			t.Fatalf("storage conformance: qemu-io not found (install qemu-utils) and no WithDiskContent given: %v", err)
		}
		s.content = QemuIO{}
	}
	return s
}

// Regions of the disks the suite writes patterns into: [off, off+len).
const (
	regionA   = 1 << 20
	regionB   = 3 << 20
	regionLen = 256 << 10
)

// storageEnv is one subtest's plugin and helpers.
type storageEnv struct {
	t     *testing.T
	ctx   context.Context
	disks sdk.DiskBackend
	snaps sdk.SnapshotBackend
	caps  map[string]bool
	suite *storageSuite
}

func (s *storageSuite) env(t *testing.T) *storageEnv {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	d, sn := s.newBackend(t)
	if d == nil {
		t.Fatal("newBackend returned a nil DiskBackend")
	}
	info, err := d.Info(ctx)
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	caps := map[string]bool{}
	for _, c := range info.Capabilities.Strings() {
		caps[c] = true
	}
	return &storageEnv{t: t, ctx: ctx, disks: d, snaps: sn, caps: caps, suite: s}
}

func (e *storageEnv) need(caps ...string) {
	e.t.Helper()
	for _, c := range caps {
		if !e.caps[c] {
			e.t.Skipf("the plugin does not advertise %q", c)
		}
	}
	if slices.Contains(caps, "snapshots") && e.snaps == nil {
		e.t.Fatal(`the plugin advertises "snapshots" but newBackend returned no SnapshotBackend`)
	}
}

// The optional interfaces; a check calls them only after need or a
// capability test, so a plugin that advertises one without implementing it
// fails here.
func (e *storageEnv) resizer() sdk.Resizer   { return optional[sdk.Resizer](e.t, e.disks, "resize") }
func (e *storageEnv) exporter() sdk.Exporter { return optional[sdk.Exporter](e.t, e.disks, "export") }
func (e *storageEnv) importer() sdk.Importer { return optional[sdk.Importer](e.t, e.disks, "import") }
func (e *storageEnv) cloner() sdk.Cloner     { return optional[sdk.Cloner](e.t, e.snaps, "snapshots") }

func optional[T any](t *testing.T, impl any, capability string) T {
	t.Helper()
	v, ok := impl.(T)
	if !ok {
		t.Fatalf("the plugin advertises %q but its client %T does not implement %T", capability, impl, (*T)(nil))
	}
	return v
}

func (e *storageEnv) create(id string) sdk.Disk {
	e.t.Helper()
	info, err := e.disks.CreateDisk(e.ctx, sdk.CreateDiskRequest{ID: id, Size: e.suite.size})
	if err != nil {
		e.t.Fatalf("CreateDisk %s: %v", id, err)
	}
	return info
}

func (e *storageEnv) get(id string) sdk.Disk {
	e.t.Helper()
	info, err := e.disks.GetDisk(e.ctx, id)
	if err != nil {
		e.t.Fatalf("GetDisk %s: %v", id, err)
	}
	return info
}

func (e *storageEnv) fill(id string, off int64, p byte) {
	e.t.Helper()
	if err := e.suite.content.Fill(e.ctx, e.get(id), off, regionLen, p); err != nil {
		e.t.Fatalf("write %#x into disk %s at %d: %v", p, id, off, err)
	}
}

func (e *storageEnv) expect(id string, off int64, p byte) {
	e.t.Helper()
	e.expectInfo(e.get(id), off, p)
}

func (e *storageEnv) expectInfo(info sdk.Disk, off int64, p byte) {
	e.t.Helper()
	if err := e.suite.content.Expect(e.ctx, info, off, regionLen, p); err != nil {
		e.t.Fatalf("disk %s (%s) at %d should read %#x: %v", info.ID, info.Path, off, p, err)
	}
}

func (e *storageEnv) snapshot(id, name string) sdk.Snapshot {
	e.t.Helper()
	sn, err := e.snaps.CreateSnapshot(e.ctx, id, name)
	if err != nil {
		e.t.Fatalf("CreateSnapshot %s %s: %v", id, name, err)
	}
	return sn
}

func (e *storageEnv) restore(id, name string) {
	e.t.Helper()
	if _, err := e.snaps.RestoreSnapshot(e.ctx, id, name); err != nil {
		e.t.Fatalf("RestoreSnapshot %s %s: %v", id, name, err)
	}
}

func (e *storageEnv) clone(id, newID, snap string) sdk.Disk {
	e.t.Helper()
	info, err := e.cloner().Clone(e.ctx, sdk.CloneRequest{ID: id, NewID: newID, Snapshot: snap})
	if err != nil {
		e.t.Fatalf("Clone %s -> %s (snapshot %q): %v", id, newID, snap, err)
	}
	return info
}

func (e *storageEnv) remove(id string) {
	e.t.Helper()
	if err := e.disks.RemoveDisk(e.ctx, id); err != nil {
		e.t.Fatalf("RemoveDisk %s: %v", id, err)
	}
}

func (e *storageEnv) snapshotNames(id string) []string {
	e.t.Helper()
	list, err := e.snaps.ListSnapshots(e.ctx, id)
	if err != nil {
		e.t.Fatalf("ListSnapshots %s: %v", id, err)
	}
	var names []string
	for _, sn := range list {
		names = append(names, sn.Name)
	}
	return names
}

// wantErr fails unless err matches one of kinds.
func wantErr(t *testing.T, what string, err error, kinds ...error) {
	t.Helper()
	for _, k := range kinds {
		if errors.Is(err, k) {
			return
		}
	}
	t.Fatalf("%s: got error %v, want one of %v", what, err, kinds)
}

// DiskBackendConformance runs the DiskBackend contract (storage.proto)
// against a plugin: create/get/list/remove and their idempotency and
// errors, resize, export and import (where advertised), and concurrent
// operations on different disks.
func DiskBackendConformance(t *testing.T, newBackend NewStorageFunc, opts ...StorageOption) {
	s := newStorageSuite(t, newBackend, opts)
	t.Run("Info", func(t *testing.T) {
		e := s.env(t)
		info, err := e.disks.Info(e.ctx)
		if err != nil || info.Name == "" || len(info.ProtocolVersions) == 0 {
			t.Fatalf("Info = %v, %v; want a name and protocol versions", info, err)
		}
	})
	t.Run("CreateGetList", func(t *testing.T) {
		e := s.env(t)
		created := e.create("disk-a")
		if created.ID != "disk-a" || created.Path == "" || created.Format == "" || created.VirtualSize < s.size {
			t.Fatalf("CreateDisk returned %v; want disk_id, path, format and virtual_size >= %d", created, s.size)
		}
		if _, err := os.Stat(created.Path); err != nil {
			t.Fatalf("the disk's path: %v", err)
		}
		got := e.get("disk-a")
		if got.Path != created.Path || got.VirtualSize != created.VirtualSize || got.Format != created.Format {
			t.Fatalf("GetDisk = %v, CreateDisk returned %v", got, created)
		}
		e.create("disk-b")
		list, err := e.disks.ListDisks(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, d := range list {
			ids = append(ids, d.ID)
		}
		slices.Sort(ids)
		if !slices.Equal(ids, []string{"disk-a", "disk-b"}) {
			t.Fatalf("ListDisks = %v, want [disk-a disk-b]", ids)
		}
		e.fill("disk-a", regionA, 0xa1)
		e.fill("disk-b", regionA, 0xb1)
		e.expect("disk-a", regionA, 0xa1)
		e.expect("disk-b", regionA, 0xb1)
	})
	t.Run("CreateExisting", func(t *testing.T) {
		e := s.env(t)
		e.create("disk-a")
		e.fill("disk-a", regionA, 0x11)
		_, err := e.disks.CreateDisk(e.ctx, sdk.CreateDiskRequest{ID: "disk-a", Size: s.size})
		wantErr(t, "CreateDisk of an existing disk", err, sdk.ErrAlreadyExists)
		e.expect("disk-a", regionA, 0x11)
	})
	t.Run("NotFound", func(t *testing.T) {
		e := s.env(t)
		_, err := e.disks.GetDisk(e.ctx, "missing")
		wantErr(t, "GetDisk", err, sdk.ErrNotFound)
		if e.caps["resize"] {
			_, err = e.resizer().Resize(e.ctx, "missing", s.size*2)
			wantErr(t, "Resize", err, sdk.ErrNotFound)
		}
		if e.caps["export"] {
			_, err = e.exporter().Export(e.ctx, sdk.ExportRequest{ID: "missing", Dest: filepath.Join(t.TempDir(), "out")})
			wantErr(t, "Export", err, sdk.ErrNotFound)
		}
		if e.caps["snapshots"] && e.snaps != nil {
			_, err = e.snaps.CreateSnapshot(e.ctx, "missing", "s1")
			wantErr(t, "CreateSnapshot", err, sdk.ErrNotFound)
			_, err = e.snaps.ListSnapshots(e.ctx, "missing")
			wantErr(t, "ListSnapshots", err, sdk.ErrNotFound)
			_, err = e.snaps.RestoreSnapshot(e.ctx, "missing", "s1")
			wantErr(t, "RestoreSnapshot", err, sdk.ErrNotFound)
			err = e.snaps.RemoveSnapshot(e.ctx, "missing", "s1")
			wantErr(t, "RemoveSnapshot", err, sdk.ErrNotFound)
			_, err = e.cloner().Clone(e.ctx, sdk.CloneRequest{ID: "missing", NewID: "new"})
			wantErr(t, "Clone", err, sdk.ErrNotFound)
		}
	})
	t.Run("InvalidArguments", func(t *testing.T) {
		e := s.env(t)
		for _, id := range []string{"", "Upper", "../escape", "a/b", ".hidden", strings.Repeat("x", 200)} {
			_, err := e.disks.CreateDisk(e.ctx, sdk.CreateDiskRequest{ID: id, Size: s.size})
			wantErr(t, fmt.Sprintf("CreateDisk(%q)", id), err, sdk.ErrInvalidArgument)
		}
		_, err := e.disks.CreateDisk(e.ctx, sdk.CreateDiskRequest{ID: "zero", Size: 0})
		wantErr(t, "CreateDisk of size 0", err, sdk.ErrInvalidArgument)
		_, err = e.disks.CreateDisk(e.ctx, sdk.CreateDiskRequest{ID: "fs", Size: s.size, Filesystem: "no-such-fs"})
		wantErr(t, "CreateDisk with an unknown filesystem", err, sdk.ErrInvalidArgument, sdk.ErrUnsupported)
		list, err := e.disks.ListDisks(e.ctx)
		if err != nil || len(list) != 0 {
			t.Fatalf("after refused creates ListDisks = %v, %v; want none", list, err)
		}
	})
	t.Run("RemoveIdempotent", func(t *testing.T) {
		e := s.env(t)
		info := e.create("disk-a")
		e.fill("disk-a", regionA, 0x5a)
		e.remove("disk-a")
		_, err := e.disks.GetDisk(e.ctx, "disk-a")
		wantErr(t, "GetDisk after RemoveDisk", err, sdk.ErrNotFound)
		if _, err := os.Stat(info.Path); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("the removed disk's file %s: %v; want it gone", info.Path, err)
		}
		e.remove("disk-a")
		e.remove("never-existed")
		list, err := e.disks.ListDisks(e.ctx)
		if err != nil || len(list) != 0 {
			t.Fatalf("ListDisks after remove = %v, %v", list, err)
		}
		// The ID can be reused and the new disk does not see the old data.
		e.create("disk-a")
		if err := s.content.Expect(e.ctx, e.get("disk-a"), regionA, regionLen, 0x5a); err == nil {
			t.Fatal("a re-created disk still holds the removed disk's data")
		}
	})
	t.Run("Resize", func(t *testing.T) {
		e := s.env(t)
		e.need("resize")
		e.create("disk-a")
		e.fill("disk-a", regionA, 0x77)
		info, err := e.resizer().Resize(e.ctx, "disk-a", s.size*2)
		if err != nil || info.VirtualSize < s.size*2 {
			t.Fatalf("Resize to %d = %v, %v", s.size*2, info, err)
		}
		if got := e.get("disk-a").VirtualSize; got < s.size*2 {
			t.Fatalf("after Resize GetDisk virtual_size = %d", got)
		}
		e.expect("disk-a", regionA, 0x77)
		if err := s.content.Fill(e.ctx, e.get("disk-a"), int64(s.size*2)-regionLen, regionLen, 0x78); err != nil {
			t.Fatalf("write into the grown range: %v", err)
		}
		_, err = e.resizer().Resize(e.ctx, "disk-a", s.size)
		wantErr(t, "Resize to a smaller size", err, sdk.ErrInvalidArgument)
		e.expect("disk-a", regionA, 0x77)
	})
	t.Run("Export", func(t *testing.T) {
		e := s.env(t)
		e.need("export")
		e.create("disk-a")
		e.fill("disk-a", regionA, 0x42)
		dir := t.TempDir()
		for _, format := range []string{"qcow2", "raw"} {
			dest := filepath.Join(dir, "export."+format)
			info, err := e.exporter().Export(e.ctx, sdk.ExportRequest{ID: "disk-a", Dest: dest, Format: format})
			if err != nil {
				t.Fatalf("Export %s: %v", format, err)
			}
			if info.Format != format || len(info.BackingChain) != 0 || info.VirtualSize < s.size {
				t.Fatalf("Export %s returned %v; want a standalone %s file of the disk's size", format, info, format)
			}
			e.expectInfo(sdk.Disk{Path: dest, Format: format}, regionA, 0x42)
			_, err = e.exporter().Export(e.ctx, sdk.ExportRequest{ID: "disk-a", Dest: dest, Format: format})
			wantErr(t, "Export onto an existing file", err, sdk.ErrAlreadyExists)
		}
		_, err := e.exporter().Export(e.ctx, sdk.ExportRequest{ID: "disk-a", Dest: filepath.Join(dir, "x"), Format: "no-such-format"})
		wantErr(t, "Export to an unknown format", err, sdk.ErrInvalidArgument, sdk.ErrUnsupported)
		e.fill("disk-a", regionA, 0x43) // the disk stays usable
		e.expect("disk-a", regionA, 0x43)
	})
	t.Run("ImportRoundTrip", func(t *testing.T) {
		e := s.env(t)
		e.need("export", "import")
		e.create("disk-a")
		e.fill("disk-a", regionA, 0x24)
		dest := filepath.Join(t.TempDir(), "export.img")
		if _, err := e.exporter().Export(e.ctx, sdk.ExportRequest{ID: "disk-a", Dest: dest}); err != nil {
			t.Fatal(err)
		}
		v, err := e.importer().Validate(e.ctx, dest, 0)
		if err != nil || len(v.Problems) != 0 {
			t.Fatalf("Validate of an export = %v, %v; want no problems", v, err)
		}
		info, err := e.importer().Import(e.ctx, sdk.ImportRequest{ID: "imported", Source: dest})
		if err != nil || info.ID != "imported" {
			t.Fatalf("Import = %v, %v", info, err)
		}
		e.expect("imported", regionA, 0x24)
		e.fill("imported", regionA, 0x25)
		e.expect("disk-a", regionA, 0x24)
		_, err = e.importer().Import(e.ctx, sdk.ImportRequest{ID: "imported", Source: dest})
		wantErr(t, "Import onto an existing disk", err, sdk.ErrAlreadyExists)

		junk := filepath.Join(t.TempDir(), "junk")
		if err := os.WriteFile(junk, []byte(strings.Repeat("not a disk image\n", 4096)), 0o644); err != nil {
			t.Fatal(err)
		}
		v, err = e.importer().Validate(e.ctx, junk, 0)
		if err != nil || len(v.Problems) == 0 {
			t.Fatalf("Validate of junk = %v, %v; want problems", v, err)
		}
		_, err = e.importer().Import(e.ctx, sdk.ImportRequest{ID: "junk", Source: junk})
		wantErr(t, "Import of junk", err, sdk.ErrInvalidArgument)
		_, err = e.disks.GetDisk(e.ctx, "junk")
		wantErr(t, "GetDisk after a refused import", err, sdk.ErrNotFound)
	})
	t.Run("ConcurrentDisks", func(t *testing.T) {
		e := s.env(t)
		const n = 6
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id := fmt.Sprintf("disk-%d", i)
				if _, err := e.disks.CreateDisk(e.ctx, sdk.CreateDiskRequest{ID: id, Size: s.size}); err != nil {
					errs <- fmt.Errorf("create %s: %w", id, err)
					return
				}
				info, err := e.disks.GetDisk(e.ctx, id)
				if err == nil {
					err = s.content.Fill(e.ctx, info, regionA, regionLen, byte(i+1))
				}
				if err == nil && i%2 == 1 {
					err = e.disks.RemoveDisk(e.ctx, id)
				}
				if err != nil {
					errs <- fmt.Errorf("%s: %w", id, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if t.Failed() {
			return
		}
		list, err := e.disks.ListDisks(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, d := range list {
			ids = append(ids, d.ID)
		}
		slices.Sort(ids)
		if !slices.Equal(ids, []string{"disk-0", "disk-2", "disk-4"}) {
			t.Fatalf("ListDisks = %v, want [disk-0 disk-2 disk-4]", ids)
		}
		for _, i := range []int{0, 2, 4} {
			e.expect(fmt.Sprintf("disk-%d", i), regionA, byte(i+1))
		}
	})
}

// SnapshotBackendConformance runs the SnapshotBackend contract
// (storage.proto), modelled on containerd's snapshotter semantics:
// snapshots are immutable points in time, restore discards later changes
// and keeps the snapshot, clones are independent copies, and a snapshot
// cannot be removed while a clone made from it depends on it.
func SnapshotBackendConformance(t *testing.T, newBackend NewStorageFunc, opts ...StorageOption) {
	s := newStorageSuite(t, newBackend, opts)
	t.Run("CreateList", func(t *testing.T) {
		e := s.env(t)
		e.need("snapshots")
		e.create("disk-a")
		if names := e.snapshotNames("disk-a"); len(names) != 0 {
			t.Fatalf("a new disk has snapshots %v", names)
		}
		before := time.Now().Add(-time.Minute)
		e.snapshot("disk-a", "s1")
		e.fill("disk-a", regionA, 0x01)
		sn2 := e.snapshot("disk-a", "s2")
		if sn2.DiskID != "disk-a" || sn2.Name != "s2" || sn2.CreatedAt.Before(before) || sn2.VirtualSize < s.size {
			t.Fatalf("CreateSnapshot returned %v", sn2)
		}
		e.snapshot("disk-a", "s0")
		list, err := e.snaps.ListSnapshots(e.ctx, "disk-a")
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for i, sn := range list {
			names = append(names, sn.Name)
			if i > 0 && sn.CreatedAt.Before(list[i-1].CreatedAt) {
				t.Fatalf("ListSnapshots not oldest first: %v", list)
			}
		}
		if !slices.Equal(names, []string{"s1", "s2", "s0"}) {
			t.Fatalf("ListSnapshots = %v, want [s1 s2 s0] (oldest first)", names)
		}
		_, err = e.snaps.CreateSnapshot(e.ctx, "disk-a", "s1")
		wantErr(t, "CreateSnapshot with a taken name", err, sdk.ErrAlreadyExists)
		e.create("disk-b")
		if names := e.snapshotNames("disk-b"); len(names) != 0 {
			t.Fatalf("snapshots leak between disks: disk-b has %v", names)
		}
		e.snapshot("disk-b", "s1") // names are per disk
		e.expect("disk-a", regionA, 0x01)
	})
	t.Run("RestoreDiscardsChanges", func(t *testing.T) {
		e := s.env(t)
		e.need("snapshots")
		e.create("disk-a")
		e.fill("disk-a", regionA, 0xa0)
		e.snapshot("disk-a", "s1")
		e.fill("disk-a", regionA, 0xa1)
		e.fill("disk-a", regionB, 0xb1)
		e.snapshot("disk-a", "s2")
		e.fill("disk-a", regionA, 0xa2)

		e.restore("disk-a", "s1")
		e.expect("disk-a", regionA, 0xa0)
		if err := s.content.Expect(e.ctx, e.get("disk-a"), regionB, regionLen, 0xb1); err == nil {
			t.Fatal("restoring s1 kept data written after it")
		}
		e.fill("disk-a", regionA, 0xa3)
		e.restore("disk-a", "s2")
		e.expect("disk-a", regionA, 0xa1)
		e.expect("disk-a", regionB, 0xb1)
		e.restore("disk-a", "s1") // a snapshot survives being restored
		e.expect("disk-a", regionA, 0xa0)
		if names := e.snapshotNames("disk-a"); !slices.Equal(names, []string{"s1", "s2"}) {
			t.Fatalf("after restores ListSnapshots = %v, want [s1 s2]", names)
		}
		_, err := e.snaps.RestoreSnapshot(e.ctx, "disk-a", "nope")
		wantErr(t, "RestoreSnapshot of a missing snapshot", err, sdk.ErrNotFound)
		e.expect("disk-a", regionA, 0xa0)
	})
	t.Run("RemoveSnapshot", func(t *testing.T) {
		e := s.env(t)
		e.need("snapshots")
		e.create("disk-a")
		e.fill("disk-a", regionA, 0x10)
		e.snapshot("disk-a", "s1")
		e.fill("disk-a", regionA, 0x20)
		e.snapshot("disk-a", "s2")
		e.fill("disk-a", regionA, 0x30)
		if err := e.snaps.RemoveSnapshot(e.ctx, "disk-a", "s1"); err != nil {
			t.Fatalf("RemoveSnapshot s1: %v", err)
		}
		if names := e.snapshotNames("disk-a"); !slices.Equal(names, []string{"s2"}) {
			t.Fatalf("after removing s1 ListSnapshots = %v, want [s2]", names)
		}
		err := e.snaps.RemoveSnapshot(e.ctx, "disk-a", "s1")
		wantErr(t, "RemoveSnapshot twice", err, sdk.ErrNotFound)
		_, err = e.snaps.RestoreSnapshot(e.ctx, "disk-a", "s1")
		wantErr(t, "RestoreSnapshot of a removed snapshot", err, sdk.ErrNotFound)
		e.expect("disk-a", regionA, 0x30) // removing a snapshot leaves the disk alone
		e.restore("disk-a", "s2")         // and later snapshots whole
		e.expect("disk-a", regionA, 0x20)
		if err := e.snaps.RemoveSnapshot(e.ctx, "disk-a", "s2"); err != nil {
			t.Fatalf("RemoveSnapshot of the restored snapshot: %v", err)
		}
		e.expect("disk-a", regionA, 0x20)
		e.snapshot("disk-a", "s1") // a removed name can be reused
	})
	t.Run("CloneCurrentState", func(t *testing.T) {
		e := s.env(t)
		e.need("snapshots")
		e.create("src")
		e.fill("src", regionA, 0x51)
		info := e.clone("src", "dst", "")
		if info.ID != "dst" || info.VirtualSize < s.size {
			t.Fatalf("Clone returned %v", info)
		}
		e.expect("dst", regionA, 0x51)
		e.fill("src", regionA, 0x52)
		e.fill("dst", regionB, 0x62)
		e.expect("dst", regionA, 0x51)
		e.expect("src", regionA, 0x52)
		if err := s.content.Expect(e.ctx, e.get("src"), regionB, regionLen, 0x62); err == nil {
			t.Fatal("a write into the clone shows in the source")
		}
		_, err := e.cloner().Clone(e.ctx, sdk.CloneRequest{ID: "src", NewID: "dst"})
		wantErr(t, "Clone onto an existing disk", err, sdk.ErrAlreadyExists)
		_, err = e.cloner().Clone(e.ctx, sdk.CloneRequest{ID: "src", NewID: "src"})
		wantErr(t, "Clone onto itself", err, sdk.ErrAlreadyExists, sdk.ErrInvalidArgument)
		// Clones of clones, and clones of untouched disks.
		e.clone("dst", "dst2", "")
		e.expect("dst2", regionA, 0x51)
		e.expect("dst2", regionB, 0x62)
		e.clone("dst2", "dst3", "")
		e.fill("dst3", regionA, 0x71)
		e.expect("dst2", regionA, 0x51)
		e.expect("dst", regionA, 0x51)
	})
	t.Run("CloneFromSnapshot", func(t *testing.T) {
		e := s.env(t)
		e.need("snapshots")
		e.create("src")
		e.fill("src", regionA, 0x81)
		e.snapshot("src", "s1")
		e.fill("src", regionA, 0x82)
		e.clone("src", "dst", "s1")
		e.expect("dst", regionA, 0x81)
		e.expect("src", regionA, 0x82)
		_, err := e.cloner().Clone(e.ctx, sdk.CloneRequest{ID: "src", NewID: "other", Snapshot: "nope"})
		wantErr(t, "Clone from a missing snapshot", err, sdk.ErrNotFound)

		err = e.snaps.RemoveSnapshot(e.ctx, "src", "s1")
		wantErr(t, "RemoveSnapshot while a clone depends on it", err, sdk.ErrInvalidState)
		if !strings.Contains(err.Error(), "dst") {
			t.Errorf("the refusal %q does not name the dependent disk dst", err)
		}
		if names := e.snapshotNames("src"); !slices.Equal(names, []string{"s1"}) {
			t.Fatalf("after a refused remove ListSnapshots = %v", names)
		}
		e.remove("dst")
		if err := e.snaps.RemoveSnapshot(e.ctx, "src", "s1"); err != nil {
			t.Fatalf("RemoveSnapshot once the clone is gone: %v", err)
		}
		e.expect("src", regionA, 0x82)
	})
	t.Run("RemoveSourceKeepsClones", func(t *testing.T) {
		e := s.env(t)
		e.need("snapshots")
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
	})
	t.Run("RemoveDiskRemovesSnapshots", func(t *testing.T) {
		e := s.env(t)
		e.need("snapshots")
		e.create("disk-a")
		e.snapshot("disk-a", "s1")
		e.snapshot("disk-a", "s2")
		e.remove("disk-a")
		_, err := e.snaps.ListSnapshots(e.ctx, "disk-a")
		wantErr(t, "ListSnapshots of a removed disk", err, sdk.ErrNotFound)
		e.create("disk-a")
		if names := e.snapshotNames("disk-a"); len(names) != 0 {
			t.Fatalf("a re-created disk inherited snapshots %v", names)
		}
	})
	t.Run("ConcurrentSnapshotsAndClones", func(t *testing.T) {
		e := s.env(t)
		e.need("snapshots")
		const n = 4
		for i := range n {
			id := fmt.Sprintf("src-%d", i)
			e.create(id)
			e.fill(id, regionA, byte(0x40+i))
		}
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id := fmt.Sprintf("src-%d", i)
				if _, err := e.snaps.CreateSnapshot(e.ctx, id, "s"); err != nil {
					errs <- err
					return
				}
				if _, err := e.cloner().Clone(e.ctx, sdk.CloneRequest{ID: id, NewID: id + "-clone", Snapshot: "s"}); err != nil {
					errs <- err
					return
				}
				if _, err := e.cloner().Clone(e.ctx, sdk.CloneRequest{ID: id, NewID: id + "-now"}); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if t.Failed() {
			return
		}
		for i := range n {
			id := fmt.Sprintf("src-%d", i)
			e.expect(id+"-clone", regionA, byte(0x40+i))
			e.expect(id+"-now", regionA, byte(0x40+i))
		}
	})
}
