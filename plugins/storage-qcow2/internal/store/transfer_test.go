package store_test

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/boxctl/boxctl/sdk"
)

// TestSnapshotsExportAndImport: each snapshot exports as a standalone
// file with the snapshot's content; imported as snapshots of another disk
// they keep their names and times and restore and clone like snapshots
// taken there.
func TestSnapshotsExportAndImport(t *testing.T) {
	e := newEnv(t, "", "")
	e.create("src", 64*mib)
	qemuWrite(t, e.path("src"), mib, mib, 0x11)
	e.snapshot("src", "s1")
	qemuWrite(t, e.path("src"), mib, mib, 0x22)
	e.snapshot("src", "s2")
	qemuWrite(t, e.path("src"), mib, mib, 0x33)

	dir := t.TempDir()
	export := func(name, snap string) string {
		dest := filepath.Join(dir, name+".qcow2")
		d, err := e.disks.Export(e.ctx, sdk.ExportRequest{ID: "src", Dest: dest, Snapshot: snap})
		if err != nil || len(d.BackingChain) != 0 {
			t.Fatalf("Export %q: %+v, %v", snap, d, err)
		}
		return dest
	}
	cur, s1, s2 := export("cur", ""), export("s1", "s1"), export("s2", "s2")
	for f, p := range map[string]byte{cur: 0x33, s1: 0x11, s2: 0x22} {
		if !qemuReads(t, f, mib, mib, p) {
			t.Fatalf("export %s does not read %#x", f, p)
		}
	}
	if _, err := e.disks.Export(e.ctx, sdk.ExportRequest{ID: "src", Dest: filepath.Join(dir, "x"), Snapshot: "nope"}); !errors.Is(err, sdk.ErrNotFound) {
		t.Fatalf("Export of a missing snapshot: %v", err)
	}

	if _, err := e.disks.Import(e.ctx, sdk.ImportRequest{ID: "dst", Source: s1, Snapshot: "s1"}); !errors.Is(err, sdk.ErrNotFound) {
		t.Fatalf("Import of a snapshot of a missing disk: %v", err)
	}
	if _, err := e.disks.Import(e.ctx, sdk.ImportRequest{ID: "dst", Source: cur}); err != nil {
		t.Fatal(err)
	}
	t1, t2 := time.Unix(1700000000, 0).UTC(), time.Unix(1700000500, 0).UTC()
	for _, in := range []sdk.ImportRequest{
		{ID: "dst", Source: s1, Snapshot: "s1", SnapshotCreatedAt: t1},
		{ID: "dst", Source: s2, Snapshot: "s2", SnapshotCreatedAt: t2},
	} {
		if _, err := e.disks.Import(e.ctx, in); err != nil {
			t.Fatalf("Import snapshot %s: %v", in.Snapshot, err)
		}
	}
	if _, err := e.disks.Import(e.ctx, sdk.ImportRequest{ID: "dst", Source: s1, Snapshot: "s1"}); !errors.Is(err, sdk.ErrAlreadyExists) {
		t.Fatalf("Import of a snapshot name in use: %v", err)
	}
	snaps, err := e.snaps.ListSnapshots(e.ctx, "dst")
	if err != nil || len(snaps) != 2 || snaps[0].Name != "s1" || !snaps[0].CreatedAt.Equal(t1) || snaps[1].Name != "s2" || !snaps[1].CreatedAt.Equal(t2) {
		t.Fatalf("imported snapshots: %+v, %v", snaps, err)
	}
	if !qemuReads(t, e.path("dst"), mib, mib, 0x33) {
		t.Fatal("importing snapshots changed the disk's current state")
	}
	e.clone("dst", "c1", "s1")
	if !qemuReads(t, e.path("c1"), mib, mib, 0x11) {
		t.Fatal("a clone of an imported snapshot has the wrong content")
	}
	e.restore("dst", "s2")
	if !qemuReads(t, e.path("dst"), mib, mib, 0x22) {
		t.Fatal("restoring an imported snapshot gives the wrong content")
	}
	e.restore("dst", "s1")
	if !qemuReads(t, e.path("dst"), mib, mib, 0x11) {
		t.Fatal("restoring an imported snapshot gives the wrong content")
	}
	if err := e.snaps.RemoveSnapshot(e.ctx, "dst", "s2"); err != nil {
		t.Fatal(err)
	}
	e.remove("c1")
	e.remove("dst")
	e.remove("src")
	if n := e.count("bases"); n != 0 {
		t.Fatalf("%d bases left after removing every disk", n)
	}
}

// TestImportSnapshotRefusesBadInput: a hostile file offered as a snapshot
// is refused like one offered as a disk, and leaves nothing.
func TestImportSnapshotRefusesBadInput(t *testing.T) {
	e := newEnv(t, "", "")
	e.create("d", 16*mib)
	for name, bad := range badImages(t) {
		t.Run(name, func(t *testing.T) {
			_, err := e.disks.Import(e.ctx, sdk.ImportRequest{ID: "d", Source: bad.path, Snapshot: "s"})
			if !errors.Is(err, sdk.ErrInvalidArgument) || !strings.Contains(err.Error(), bad.problem) {
				t.Fatalf("Import as a snapshot = %v; want INVALID_ARGUMENT naming %q", err, bad.problem)
			}
			if snaps, err := e.snaps.ListSnapshots(e.ctx, "d"); err != nil || len(snaps) != 0 {
				t.Fatalf("snapshots after a refused import: %v, %v", snaps, err)
			}
			if n := e.count("bases"); n != 0 {
				t.Fatalf("a refused snapshot import left %d bases", n)
			}
		})
	}
}

// TestImportRefusesHostileHeaders: qcow2 headers an attacker would write
// into an archive's disk. Every backing reference is refused, whatever it
// names, as are external data files and sizes no real image has.
func TestImportRefusesHostileHeaders(t *testing.T) {
	e := newEnv(t, "", "")
	dir := t.TempDir()
	mk := func(name string, args ...string) string {
		p := filepath.Join(dir, name+".qcow2")
		run(t, "qemu-img", append(append([]string{"create", "-q", "-f", "qcow2"}, args...), p, "16M")...)
		return p
	}
	patch32 := func(p string, off int64, v uint32) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		binary.BigEndian.PutUint32(b[off:], v)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	noBackingName := mk("fmtonly", "-u", "-b", "/etc/shadow", "-F", "raw")
	patchBE64(t, noBackingName, 8, 0) // backing_file_offset: only the format extension stays
	patch32(noBackingName, 16, 0)
	cases := map[string]struct {
		path, problem string
	}{
		"backing file into another box's disk": {mk("sibling", "-u", "-b", "../disks/victim.qcow2", "-F", "qcow2"), `backing file "../disks/victim.qcow2"`},
		"backing file by relative path":        {mk("relative", "-u", "-b", "../../../../etc/shadow", "-F", "raw"), "backing file reference"},
		"backing file without a format":        {mk("noformat", "-u", "-b", "/dev/sda", "-F", "raw"), "/dev/sda"},
		"backing format extension alone":       {noBackingName, "backing format extension"},
		"external data file":                   {mk("datafile", "-o", "data_file="+filepath.Join(dir, "data.raw")), "external data file"},
		"external data bit without extension":  {patchIncompat(t, mk("databit"), 1<<2), "external data file"},
		"cluster size of 4 GiB":                {patch32(mk("hugecluster"), 20, 32), "cluster_bits 32"},
		"cluster size of 256 bytes":            {patch32(mk("tinycluster"), 20, 8), "cluster_bits 8"},
		"L1 table of 16 GiB":                   {patch32(mk("hugel1"), 36, 1<<31), "L1 table of"},
		"refcount order 7":                     {patch32(mk("refcount7"), 96, 7), "refcount_order 7"},
		"refcount table of 4 TiB":              {patch32(mk("hugerefcount"), 56, 1<<26), "refcount table of"},
		"encrypted":                            {patch32(mk("encrypted"), 32, 1), "encrypted"},
		"internal snapshot":                    {withInternalSnapshot(t, mk("internalsnap")), "internal snapshots"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			v, err := e.disks.Validate(e.ctx, c.path, 0)
			if err != nil || len(v.Problems) == 0 || !strings.Contains(v.Problems[0], c.problem) {
				t.Fatalf("Validate = %+v, %v; want a problem naming %q", v, err, c.problem)
			}
			_, err = e.disks.Import(e.ctx, sdk.ImportRequest{ID: "imported", Source: c.path})
			if !errors.Is(err, sdk.ErrInvalidArgument) || !strings.Contains(err.Error(), c.problem) {
				t.Fatalf("Import = %v; want INVALID_ARGUMENT naming %q", err, c.problem)
			}
			t.Log(err)
			if n := e.count("disks"); n != 0 {
				t.Fatalf("a refused import left %d files", n)
			}
		})
	}
}

func patchIncompat(t *testing.T, p string, bits uint64) string {
	t.Helper()
	patchBE64(t, p, 72, bits)
	return p
}

func withInternalSnapshot(t *testing.T, p string) string {
	t.Helper()
	run(t, "qemu-img", "snapshot", "-c", "s1", p)
	return p
}

// TestImportMovesWhatItIsGiven: with Move the source is renamed into the
// store (it is gone afterwards) and still validated; without, it is copied.
func TestImportMovesWhatItIsGiven(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	e := newEnv(t, dir, "")
	mk := func(name string, pattern byte) string {
		p := filepath.Join(filepath.Dir(dir), name+".qcow2")
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "16M")
		qemuWrite(t, p, mib, mib, pattern)
		return p
	}
	moved := mk("moved", 0x61)
	if _, err := e.disks.Import(e.ctx, sdk.ImportRequest{ID: "m", Source: moved, Move: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(moved); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the moved source is still there: %v", err)
	}
	if !qemuReads(t, e.path("m"), mib, mib, 0x61) {
		t.Fatal("the moved disk has the wrong content")
	}
	snap := mk("snap", 0x62)
	if _, err := e.disks.Import(e.ctx, sdk.ImportRequest{ID: "m", Source: snap, Snapshot: "s", Move: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(snap); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the moved snapshot source is still there: %v", err)
	}
	e.restore("m", "s")
	if !qemuReads(t, e.path("m"), mib, mib, 0x62) {
		t.Fatal("the moved snapshot has the wrong content")
	}
	copied := mk("copied", 0x63)
	if _, err := e.disks.Import(e.ctx, sdk.ImportRequest{ID: "c", Source: copied}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(copied); err != nil {
		t.Fatalf("an import without Move took the source: %v", err)
	}
	// A hostile file handed over is refused all the same, and not kept.
	bad := filepath.Join(filepath.Dir(dir), "bad.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", bad, "16M")
	if _, err := e.disks.Import(e.ctx, sdk.ImportRequest{ID: "b", Source: bad, Move: true}); !errors.Is(err, sdk.ErrInvalidArgument) {
		t.Fatalf("Import with Move of a file with a backing file: %v", err)
	}
	if n := e.count("disks"); n != 2 {
		t.Fatalf("%d disk files, want 2", n)
	}
}
