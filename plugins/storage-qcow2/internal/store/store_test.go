package store_test

import (
	"context"
	"encoding/binary"
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

	"github.com/hashicorp/hcl/v2"
	"golang.org/x/sys/unix"

	"github.com/boxctl/boxctl/plugins/storage-qcow2/internal/store"
	"github.com/boxctl/boxctl/plugins/storage-qcow2/qcow2"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/sdktest"
)

const mib = 1 << 20

// newStorage is the conformance suites' fresh root: a new Store, checked
// when the check ends like every store the tests make.
func newStorage(t *testing.T, stateDir string) sdktest.Storage {
	needTools(t, "qemu-img", "qemu-io", "mkfs.ext4")
	t.Cleanup(func() {
		if !t.Failed() {
			checkStore(t, stateDir)
		}
	})
	s := store.New()
	return sdktest.Storage{Disks: s, Snapshots: s}
}

func TestDiskBackendConformance(t *testing.T) {
	sdktest.DiskBackendConformance(t, newStorage)
}

func TestSnapshotBackendConformance(t *testing.T) {
	sdktest.SnapshotBackendConformance(t, newStorage)
}

// TestInfo: the plugin declares constant-time clones; the sdk adds the
// features Store implements.
func TestInfo(t *testing.T) {
	e := newEnv(t, "", "")
	info, err := e.disks.Info(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"clone", "clone-o1", "export", "import", "resize", "snapshot-transfer", "snapshots"}
	if info.Name != "qcow2" || info.Version != store.Version || !slices.Equal(info.Capabilities.Strings(), want) {
		t.Fatalf("Info = %+v (capabilities %v); want qcow2 %s with %v", info, info.Capabilities.Strings(), store.Version, want)
	}
}

func TestConfigure(t *testing.T) {
	needTools(t, "mkfs.ext4")
	ctx := context.Background()
	cases := []struct {
		body    string
		wantErr string
		line    int
	}{
		{body: "cluster_size = \"128KiB\"\nmax_virtual_size = \"1TiB\"\nmkfs = \"" + tool("mkfs.ext4") + "\"\n"},
		{body: "\ncluster_size = \"3KiB\"\n", wantErr: "Invalid cluster_size", line: 2},
		{body: "max_virtual_size = \"lots\"\n", wantErr: "Invalid max_virtual_size", line: 1},
		{body: "mkfs = \"mkfs.ext4\"\n", wantErr: "Invalid mkfs", line: 1},
		{body: "colour = \"blue\"\n", wantErr: "Unsupported argument", line: 1},
	}
	for _, c := range cases {
		s := store.New()
		err := s.Configure(ctx, &sdk.Config{StateDir: t.TempDir(), Body: []byte(c.body), Filename: "boxctl.hcl", BodyStart: hcl.Pos{Line: 1, Column: 1}})
		if c.wantErr == "" {
			if err != nil {
				t.Errorf("Configure(%q): %v", c.body, err)
			}
			continue
		}
		var diags hcl.Diagnostics
		if !errors.As(err, &diags) || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("Configure(%q) = %v; want diagnostics %q", c.body, err, c.wantErr)
			continue
		}
		if r := diags[0].Subject; r == nil || r.Filename != "boxctl.hcl" || r.Start.Line != c.line {
			t.Errorf("Configure(%q): diagnostic at %v; want boxctl.hcl line %d", c.body, diags[0].Subject, c.line)
		}
	}
}

func TestConfiguredLimitsApply(t *testing.T) {
	e := newEnv(t, "", `cluster_size = "128KiB"
max_virtual_size = "128MiB"`)
	_, err := e.disks.CreateDisk(e.ctx, sdk.CreateDiskRequest{ID: "big", Size: 256 * mib})
	if !errors.Is(err, sdk.ErrInvalidArgument) {
		t.Fatalf("CreateDisk above max_virtual_size: %v", err)
	}
	info, err := e.disks.CreateDisk(e.ctx, sdk.CreateDiskRequest{ID: "ok", Size: 64 * mib})
	if err != nil {
		t.Fatal(err)
	}
	out := run(t, "qemu-img", "info", "--output=json", info.Path)
	if !strings.Contains(out, `"cluster-size": 131072`) {
		t.Fatalf("overlay does not use cluster_size 128KiB:\n%s", out)
	}
	if _, err := e.disks.Resize(e.ctx, "ok", 256*mib); !errors.Is(err, sdk.ErrInvalidArgument) {
		t.Fatalf("Resize above max_virtual_size: %v", err)
	}
}

// TestDiskInfoMatchesQemu compares GetDisk with qemu-img info
// --backing-chain for disks with chains of every shape the store makes.
func TestDiskInfoMatchesQemu(t *testing.T) {
	e := newEnv(t, "", "")
	e.create("plain", 64*mib)
	e.create("snapped", 64*mib)
	qemuWrite(t, e.path("snapped"), 0, 128<<10, 1)
	e.snapshot("snapped", "s1")
	qemuWrite(t, e.path("snapped"), 0, 128<<10, 2)
	e.snapshot("snapped", "s2")
	e.clone("snapped", "cloned", "")
	e.clone("snapped", "from-s1", "s1")
	if _, err := e.disks.Resize(e.ctx, "cloned", 100*mib); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"plain", "snapped", "cloned", "from-s1"} {
		info, err := e.disks.GetDisk(e.ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		chain := qemuChain(t, info.Path)
		if len(chain) != len(info.BackingChain)+1 {
			t.Fatalf("%s: qemu-img sees %d layers, GetDisk %d: %+v vs %v", id, len(chain), len(info.BackingChain)+1, chain, info)
		}
		top := chain[0]
		if top.Filename != info.Path || top.Format != info.Format || top.VirtualSize != info.VirtualSize || top.ActualSize != info.AllocatedSize {
			t.Errorf("%s: qemu-img %+v, GetDisk %v", id, top, info)
		}
		for i, b := range info.BackingChain {
			q := chain[i+1]
			if q.Filename != b.Path || q.Format != b.Format || q.VirtualSize != b.VirtualSize {
				t.Errorf("%s layer %d: qemu-img %+v, GetDisk %v", id, i+1, q, b)
			}
			if chain[i].FullBackingFilename != b.Path {
				t.Errorf("%s layer %d: qemu-img full-backing-filename %q, GetDisk %q", id, i, chain[i].FullBackingFilename, b.Path)
			}
		}
	}
	list, err := e.disks.ListDisks(e.ctx)
	if err != nil || len(list) != 4 {
		t.Fatalf("ListDisks = %v, %v", list, err)
	}
}

// TestCreatedDiskIsExt4 checks the blank base with e2fsck (through a raw
// conversion by qemu-img) and debugfs, and that bases are shared per size.
func TestCreatedDiskIsExt4(t *testing.T) {
	needTools(t, "e2fsck", "debugfs")
	e := newEnv(t, "", "")
	a := e.create("a", 96*mib)
	e.create("b", 96*mib)
	e.create("c", 64*mib)
	raw := filepath.Join(t.TempDir(), "a.raw")
	run(t, "qemu-img", "convert", "-O", "raw", a.Path, raw)
	run(t, "e2fsck", "-fn", raw)
	out := run(t, "debugfs", "-R", "stats", raw)
	if !strings.Contains(out, "Filesystem features:") || !strings.Contains(out, "has_journal") || !strings.Contains(out, "extent") {
		t.Fatalf("debugfs stats: not an ext4 with a journal:\n%s", out)
	}
	if got := a.BackingChain; len(got) != 1 || got[0].Format != "raw" || got[0].VirtualSize != 96*mib {
		t.Fatalf("backing chain %v; want the 96 MiB raw blank base", got)
	}
	blanks, _ := filepath.Glob(filepath.Join(e.dir, "blank", "*"))
	if len(blanks) != 2 {
		t.Fatalf("blank bases %v; want one per size (2)", blanks)
	}
	fi, err := os.Stat(blanks[0])
	if err != nil || fi.Mode().Perm() != 0o444 {
		t.Fatalf("blank base %v mode %v; want 0444", err, fi.Mode())
	}
}

func TestBlankBaseBuiltOnceConcurrently(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "qcow2")
	var envs []*testEnv
	for range 3 { // three "processes" (separate stores) on one directory
		envs = append(envs, newEnv(t, dir, ""))
	}
	var wg sync.WaitGroup
	for i, e := range envs {
		for j := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id := fmt.Sprintf("d-%d-%d", i, j)
				if _, err := e.disks.CreateDisk(e.ctx, sdk.CreateDiskRequest{ID: id, Size: 80 * mib}); err != nil {
					t.Errorf("CreateDisk %s: %v", id, err)
				}
			}()
		}
	}
	wg.Wait()
	blanks, _ := filepath.Glob(filepath.Join(dir, "blank", "*"))
	if len(blanks) != 1 {
		t.Fatalf("blank files %v; want exactly one", blanks)
	}
	list, err := envs[0].disks.ListDisks(envs[0].ctx)
	if err != nil || len(list) != 6 {
		t.Fatalf("ListDisks = %d disks, %v", len(list), err)
	}
}

// TestSnapshotRestoreThroughQemu writes with qemu-io, as a VM would.
func TestSnapshotRestoreThroughQemu(t *testing.T) {
	e := newEnv(t, "", "")
	e.create("d", 64*mib)
	p := e.path("d")
	qemuWrite(t, p, 5*mib, mib, 0xaa)
	sn := e.snapshot("d", "before")
	if sn.Size < mib {
		t.Fatalf("snapshot size %d; want at least the 1 MiB written", sn.Size)
	}
	qemuWrite(t, p, 5*mib, mib, 0xbb)
	qemuWrite(t, p, 9*mib, mib, 0xcc)
	e.restore("d", "before")
	if !qemuReads(t, p, 5*mib, mib, 0xaa) {
		t.Fatal("data written before the snapshot does not read back after restore")
	}
	if qemuReads(t, p, 9*mib, mib, 0xcc) {
		t.Fatal("data written after the snapshot survived the restore")
	}
	list, err := e.snaps.ListSnapshots(e.ctx, "d")
	if err != nil || len(list) != 1 || list[0].Size != sn.Size {
		t.Fatalf("ListSnapshots = %v, %v", list, err)
	}
}

func TestCloneComparesEqualThenDiverges(t *testing.T) {
	e := newEnv(t, "", "")
	e.create("src", 64*mib)
	qemuWrite(t, e.path("src"), 2*mib, 3*mib, 0x11)
	e.clone("src", "dst", "")
	run(t, "qemu-img", "compare", e.path("src"), e.path("dst"))
	qemuWrite(t, e.path("src"), 2*mib, 64<<10, 0x22)
	qemuWrite(t, e.path("dst"), 7*mib, 64<<10, 0x33)
	cmd := exec.Command(tool("qemu-img"), "compare", e.path("src"), e.path("dst"))
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("qemu-img compare after divergent writes: %v\n%s; want 'differ' (exit 1)", err, out)
	}
	if !qemuReads(t, e.path("dst"), 2*mib, 64<<10, 0x11) {
		t.Fatal("a write into the source shows in the clone")
	}
	if qemuReads(t, e.path("src"), 7*mib, 64<<10, 0x33) {
		t.Fatal("a write into the clone shows in the source")
	}
	// A clone of a clone of an untouched overlay shares the base.
	e.clone("dst", "dst2", "")
	e.clone("dst2", "dst3", "")
	run(t, "qemu-img", "compare", e.path("dst"), e.path("dst3"))
}

// TestExportMatchesQemuConvert flattens a 3-layer chain and compares with
// qemu-img convert of the same chain.
func TestExportMatchesQemuConvert(t *testing.T) {
	e := newEnv(t, "", "")
	e.create("d", 64*mib)
	p := e.path("d")
	qemuWrite(t, p, 0, 2*mib, 0x01)
	e.snapshot("d", "s1")
	qemuWrite(t, p, mib, 2*mib, 0x02)
	e.snapshot("d", "s2")
	qemuWrite(t, p, 10*mib, 64<<10, 0x03)
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -z 0 64k", p)
	dir := t.TempDir()
	ref := filepath.Join(dir, "ref.raw")
	run(t, "qemu-img", "convert", "-O", "raw", p, ref)
	for _, format := range []string{"qcow2", "raw"} {
		dest := filepath.Join(dir, "out."+format)
		info, err := e.disks.Export(e.ctx, sdk.ExportRequest{ID: "d", Dest: dest, Format: format})
		if err != nil {
			t.Fatal(err)
		}
		if info.Path != dest || info.Format != format || len(info.BackingChain) != 0 {
			t.Fatalf("Export info %v", info)
		}
		run(t, "qemu-img", "compare", "-f", format, "-F", "raw", dest, ref)
		if format == "qcow2" {
			run(t, "qemu-img", "check", dest)
		}
		v, err := e.disks.Validate(e.ctx, dest, 0)
		if format == "qcow2" && (err != nil || len(v.Problems) != 0) {
			t.Fatalf("Validate of the export: %v, %v", v, err)
		}
	}
	// Sparse: the raw export allocates about what was written, not 64 MiB.
	info, err := e.disks.FileInfo(e.ctx, filepath.Join(dir, "out.raw"))
	if err != nil || info.AllocatedSize > 32*mib {
		t.Fatalf("raw export allocates %d bytes (%v); want it sparse", info.AllocatedSize, err)
	}
}

// badImages builds the hostile files the import tests feed the plugin.
func badImages(t *testing.T) map[string]struct {
	path    string
	problem string
} {
	dir := t.TempDir()
	out := map[string]struct {
		path    string
		problem string
	}{}
	backing := filepath.Join(dir, "backing.qcow2")
	run(t, "qemu-img", "create", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", backing, "16M")
	out["backing file"] = struct{ path, problem string }{backing, "backing file"}

	outside := filepath.Join(dir, "outside.qcow2")
	run(t, "qemu-img", "create", "-f", "qcow2", outside, "16M")
	patchBE64(t, outside, 40, 1<<40) // l1_table_offset far beyond the end of the file
	out["table outside file"] = struct{ path, problem string }{outside, "outside file"}

	notQcow := filepath.Join(dir, "raw.img")
	if err := os.WriteFile(notQcow, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	out["not qcow2"] = struct{ path, problem string }{notQcow, "not qcow2"}

	huge := filepath.Join(dir, "huge.qcow2")
	run(t, "qemu-img", "create", "-f", "qcow2", "-o", "cluster_size=2M", huge, "1P") // a 6 MiB file claiming 1 PiB
	out["absurd virtual size"] = struct{ path, problem string }{huge, "too large"}

	// Opening a FIFO for reading waits for a writer: Validate and Import
	// must refuse it instead.
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	out["fifo"] = struct{ path, problem string }{fifo, "not a regular file"}
	return out
}

func patchBE64(t *testing.T, path string, off int64, v uint64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

func TestImportRefusesBadInput(t *testing.T) {
	e := newEnv(t, "", "")
	for name, bad := range badImages(t) {
		t.Run(name, func(t *testing.T) {
			v, err := e.disks.Validate(e.ctx, bad.path, 0)
			if err != nil || len(v.Problems) == 0 || !strings.Contains(v.Problems[0], bad.problem) {
				t.Fatalf("Validate = %v, %v; want a problem naming %q", v, err, bad.problem)
			}
			_, err = e.disks.Import(e.ctx, sdk.ImportRequest{ID: "imported", Source: bad.path})
			if !errors.Is(err, sdk.ErrInvalidArgument) || !strings.Contains(err.Error(), bad.problem) {
				t.Fatalf("Import = %v; want INVALID_ARGUMENT naming %q", err, bad.problem)
			}
			if _, err := e.disks.GetDisk(e.ctx, "imported"); !errors.Is(err, sdk.ErrNotFound) {
				t.Fatalf("GetDisk after a refused import: %v", err)
			}
			if ents, _ := os.ReadDir(filepath.Join(e.dir, "disks")); len(ents) != 0 {
				t.Fatalf("a refused import left files: %v", ents)
			}
		})
	}
	// A request cap below the store's applies.
	src := filepath.Join(t.TempDir(), "ok.qcow2")
	run(t, "qemu-img", "create", "-f", "qcow2", src, "64M")
	_, err := e.disks.Import(e.ctx, sdk.ImportRequest{ID: "capped", Source: src, MaxVirtualSize: 32 * mib})
	if !errors.Is(err, sdk.ErrInvalidArgument) || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("Import above the request's cap: %v", err)
	}
	_, err = e.disks.Import(e.ctx, sdk.ImportRequest{ID: "missing", Source: "/nonexistent/disk.qcow2"})
	if !errors.Is(err, sdk.ErrNotFound) {
		t.Fatalf("Import of a missing file: %v", err)
	}
	_, err = e.disks.Import(e.ctx, sdk.ImportRequest{ID: "relative", Source: "disk.qcow2"})
	if !errors.Is(err, sdk.ErrInvalidArgument) {
		t.Fatalf("Import of a relative path: %v", err)
	}
}

func TestImportedDiskWorks(t *testing.T) {
	e := newEnv(t, "", "")
	src := filepath.Join(t.TempDir(), "in.qcow2")
	run(t, "qemu-img", "create", "-f", "qcow2", src, "32M")
	qemuWrite(t, src, mib, mib, 0x5e)
	info, err := e.disks.Import(e.ctx, sdk.ImportRequest{ID: "imp", Source: src})
	if err != nil {
		t.Fatal(err)
	}
	if len(info.BackingChain) != 0 || info.VirtualSize != 32*mib {
		t.Fatalf("imported disk %v; want a standalone 32 MiB disk", info)
	}
	qemuWrite(t, src, mib, mib, 0x00) // the import is a copy
	if !qemuReads(t, e.path("imp"), mib, mib, 0x5e) {
		t.Fatal("imported content wrong")
	}
	e.snapshot("imp", "s")
	qemuWrite(t, e.path("imp"), mib, mib, 0x6e)
	e.clone("imp", "imp2", "s")
	if !qemuReads(t, e.path("imp2"), mib, mib, 0x5e) {
		t.Fatal("clone of an imported disk's snapshot has the wrong content")
	}
}

func TestFileInfoDoesNotFollowBacking(t *testing.T) {
	e := newEnv(t, "", "")
	bad := badImages(t)["backing file"].path
	info, err := e.disks.FileInfo(e.ctx, bad)
	if err != nil {
		t.Fatal(err)
	}
	chain := info.BackingChain
	if info.Format != "qcow2" || info.VirtualSize != 16*mib || len(chain) != 1 || chain[0].Path != "/etc/shadow" || chain[0].VirtualSize != 0 {
		t.Fatalf("FileInfo = %v; want the claimed backing file, not opened", info)
	}
	if _, err := e.disks.FileInfo(e.ctx, "/nonexistent"); !errors.Is(err, sdk.ErrNotFound) {
		t.Fatalf("FileInfo of a missing file: %v", err)
	}
}

// TestGarbageCollection checks that bases are deleted exactly when nothing
// references them, and that removing everything leaves only the blank
// base cache.
func TestGarbageCollection(t *testing.T) {
	e := newEnv(t, "", "")
	e.create("a", 64*mib)
	qemuWrite(t, e.path("a"), 0, mib, 1)
	e.snapshot("a", "s1")
	qemuWrite(t, e.path("a"), 0, mib, 2)
	e.snapshot("a", "s2")
	qemuWrite(t, e.path("a"), 0, mib, 3)
	e.clone("a", "b", "s1")
	e.clone("a", "c", "")
	if n := e.count("bases"); n != 3 {
		t.Fatalf("%d bases, want 3 (s1, s2, clone freeze)", n)
	}
	checkStore(t, e.dir)
	if err := e.snaps.RemoveSnapshot(e.ctx, "a", "s2"); err != nil {
		t.Fatal(err)
	}
	if n := e.count("bases"); n != 3 { // s2's base is still in a's chain
		t.Fatalf("%d bases after removing s2, want 3", n)
	}
	e.remove("a")
	if n := e.count("bases"); n != 3 { // c still overlays the chain
		t.Fatalf("%d bases after removing a, want 3", n)
	}
	if !qemuReads(t, e.path("c"), 0, mib, 3) || !qemuReads(t, e.path("b"), 0, mib, 1) {
		t.Fatal("clones lost data when their source was removed")
	}
	e.remove("c")
	if n := e.count("bases"); n != 1 { // only s1's base, under b
		t.Fatalf("%d bases after removing c, want 1", n)
	}
	e.remove("b")
	if e.count("bases") != 0 || e.count("disks") != 0 || e.count("blank") != 1 {
		t.Fatalf("after removing every disk: %d bases, %d disks, %d blank", e.count("bases"), e.count("disks"), e.count("blank"))
	}
}

// TestConcurrentProcesses runs several stores (as several plugin
// processes would) on one state directory, each working on its own disks
// that share bases through clones.
func TestConcurrentProcesses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "qcow2")
	first := newEnv(t, dir, "")
	first.create("shared", 64*mib)
	qemuWrite(t, first.path("shared"), 0, mib, 0x99)
	first.snapshot("shared", "s")
	var wg sync.WaitGroup
	for p := range 3 {
		e := newEnv(t, dir, "")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 4 {
				id := fmt.Sprintf("p%d-%d", p, i)
				steps := []func() error{
					func() error {
						_, err := e.snaps.Clone(e.ctx, sdk.CloneRequest{ID: "shared", NewID: id, Snapshot: "s"})
						return err
					},
					func() error { _, err := e.snaps.CreateSnapshot(e.ctx, id, "x"); return err },
					func() error {
						_, err := e.snaps.Clone(e.ctx, sdk.CloneRequest{ID: id, NewID: id + "-c"})
						return err
					},
					func() error { _, err := e.snaps.RestoreSnapshot(e.ctx, id, "x"); return err },
					func() error {
						if i%2 == 0 {
							return e.disks.RemoveDisk(e.ctx, id)
						}
						return nil
					},
				}
				for n, step := range steps {
					if err := step(); err != nil {
						t.Errorf("%s step %d: %v", id, n, err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	err := first.snaps.RemoveSnapshot(first.ctx, "shared", "s")
	if !errors.Is(err, sdk.ErrInvalidState) {
		t.Fatalf("RemoveSnapshot with clones made from it: %v", err)
	}
	list, err := first.disks.ListDisks(first.ctx)
	if err != nil || len(list) != 1+3*4+3*2 {
		t.Fatalf("ListDisks: %d disks, %v; want %d", len(list), err, 1+3*4+3*2)
	}
	for _, d := range list {
		if !qemuReads(t, d.Path, 0, mib, 0x99) {
			t.Errorf("disk %s lost the shared data", d.ID)
		}
	}
}

// TestRecoveryLeavesLiveOperationsAlone pauses a snapshot in one store
// after its overlay was frozen, starts another store on the same directory
// (whose Configure recovers dead operations), and checks that the paused
// operation was not rolled back under it.
func TestRecoveryLeavesLiveOperationsAlone(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "qcow2")
	reached, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	paused := newEnv(t, dir, "", store.WithCrashHook(func(point string) {
		if point == "snapshot:frozen" {
			once.Do(func() { close(reached) })
			<-release
		}
	}))
	paused.create("d", 64*mib)
	qemuWrite(t, paused.path("d"), 0, mib, 0x7a)
	done := make(chan error, 1)
	go func() {
		_, err := paused.snaps.CreateSnapshot(paused.ctx, "d", "s")
		done <- err
	}()
	select {
	case <-reached:
	case err := <-done:
		t.Fatalf("snapshot finished without reaching the hook: %v", err)
	}
	other := newEnv(t, dir, "") // runs recovery
	if _, err := other.disks.GetDisk(other.ctx, "other-disk"); !errors.Is(err, sdk.ErrNotFound) {
		t.Fatal(err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("the paused snapshot failed after another store started: %v", err)
	}
	names, err := other.snaps.ListSnapshots(other.ctx, "d")
	if err != nil || len(names) != 1 {
		t.Fatalf("ListSnapshots = %v, %v", names, err)
	}
	if !qemuReads(t, other.path("d"), 0, mib, 0x7a) {
		t.Fatal("data lost")
	}
}

func TestOperationsWaitForEachOtherOnOneDisk(t *testing.T) {
	e := newEnv(t, "", "")
	e.create("d", 64*mib)
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			switch i % 3 {
			case 0:
				_, err = e.snaps.CreateSnapshot(e.ctx, "d", fmt.Sprintf("s%d", i))
			case 1:
				_, err = e.snaps.Clone(e.ctx, sdk.CloneRequest{ID: "d", NewID: fmt.Sprintf("c%d", i)})
			case 2:
				_, err = e.disks.GetDisk(e.ctx, "d")
			}
			if err != nil && !errors.Is(err, sdk.ErrInvalidState) {
				t.Errorf("op %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
}

func TestUnconfigured(t *testing.T) {
	s := store.New()
	if _, err := s.GetDisk(context.Background(), "x"); !errors.Is(err, sdk.ErrInvalidState) {
		t.Fatalf("GetDisk before Configure: %v", err)
	}
}

func TestCheckFindsDamage(t *testing.T) {
	e := newEnv(t, "", "")
	e.create("d", 64*mib)
	e.snapshot("d", "s")
	if err := os.WriteFile(filepath.Join(e.dir, "bases", "stray.qcow2"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	bases, _ := filepath.Glob(filepath.Join(e.dir, "bases", "[0-9a-f]*.qcow2"))
	if err := os.Chmod(bases[0], 0o644); err != nil {
		t.Fatal(err)
	}
	problems, err := store.Check(e.ctx, e.dir)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(problems, "\n")
	if !strings.Contains(text, "unreferenced file bases/stray.qcow2") || !strings.Contains(text, "writable") {
		t.Fatalf("Check missed the damage:\n%s", text)
	}
	// Put things right so the cleanup check passes.
	os.Remove(filepath.Join(e.dir, "bases", "stray.qcow2"))
	os.Chmod(bases[0], 0o444)
}

// helpers

func (e *testEnv) create(id string, size uint64) sdk.Disk {
	e.t.Helper()
	info, err := e.disks.CreateDisk(e.ctx, sdk.CreateDiskRequest{ID: id, Size: size})
	if err != nil {
		e.t.Fatalf("CreateDisk %s: %v", id, err)
	}
	return info
}

func (e *testEnv) path(id string) string {
	e.t.Helper()
	info, err := e.disks.GetDisk(e.ctx, id)
	if err != nil {
		e.t.Fatalf("GetDisk %s: %v", id, err)
	}
	return info.Path
}

func (e *testEnv) snapshot(id, name string) sdk.Snapshot {
	e.t.Helper()
	sn, err := e.snaps.CreateSnapshot(e.ctx, id, name)
	if err != nil {
		e.t.Fatalf("CreateSnapshot %s %s: %v", id, name, err)
	}
	return sn
}

func (e *testEnv) restore(id, name string) {
	e.t.Helper()
	if _, err := e.snaps.RestoreSnapshot(e.ctx, id, name); err != nil {
		e.t.Fatalf("RestoreSnapshot %s %s: %v", id, name, err)
	}
}

func (e *testEnv) clone(id, newID, snap string) {
	e.t.Helper()
	if _, err := e.snaps.Clone(e.ctx, sdk.CloneRequest{ID: id, NewID: newID, Snapshot: snap}); err != nil {
		e.t.Fatalf("Clone %s -> %s: %v", id, newID, err)
	}
}

func (e *testEnv) remove(id string) {
	e.t.Helper()
	if err := e.disks.RemoveDisk(e.ctx, id); err != nil {
		e.t.Fatalf("RemoveDisk %s: %v", id, err)
	}
}

func (e *testEnv) count(dir string) int {
	ents, err := os.ReadDir(filepath.Join(e.dir, dir))
	if err != nil {
		e.t.Fatal(err)
	}
	return len(ents)
}

// TestChainDepthLimit snapshots until the chain is as deep as the qcow2
// package opens, and checks the next freeze is refused clearly while the
// disk stays usable.
func TestChainDepthLimit(t *testing.T) {
	e := newEnv(t, "", "")
	e.create("d", 64*mib)
	for i := range 62 {
		e.snapshot("d", fmt.Sprintf("s%d", i))
	}
	info, err := e.disks.GetDisk(e.ctx, "d")
	if err != nil || len(info.BackingChain) != 63 {
		t.Fatalf("GetDisk: %d layers below the overlay, %v; want 63", len(info.BackingChain), err)
	}
	_, err = e.snaps.CreateSnapshot(e.ctx, "d", "one-too-many")
	if !errors.Is(err, sdk.ErrInvalidState) || !strings.Contains(err.Error(), "flatten") {
		t.Fatalf("CreateSnapshot beyond the chain limit: %v", err)
	}
	e.clone("d", "empty-overlay", "") // shares the current base: no new layer
	qemuWrite(t, info.Path, 0, mib, 0x64)
	_, err = e.snaps.Clone(e.ctx, sdk.CloneRequest{ID: "d", NewID: "c"})
	if !errors.Is(err, sdk.ErrInvalidState) {
		t.Fatalf("Clone beyond the chain limit: %v", err)
	}
	e.clone("d", "c", "s3")
	dest := filepath.Join(t.TempDir(), "flat.qcow2")
	if _, err := e.disks.Export(e.ctx, sdk.ExportRequest{ID: "d", Dest: dest}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.disks.Import(e.ctx, sdk.ImportRequest{ID: "flat", Source: dest}); err != nil {
		t.Fatal(err)
	}
	e.snapshot("flat", "s")
	if !qemuReads(t, e.path("flat"), 0, mib, 0x64) {
		t.Fatal("the flattened disk lost data")
	}
}

// TestSweepRemovesOrphans leaves debris no journal entry explains (as a
// crash outside the journaled steps, or a bug, could) and checks the next
// start removes what is unreferenced and adopts a complete blank base.
func TestSweepRemovesOrphans(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "qcow2")
	e := newEnv(t, dir, "")
	e.create("kept", 64*mib)
	for _, f := range []string{"disks/.ghost.0123456789abcdef0123456789abcdef.tmp", "bases/0123456789abcdef0123456789abcdef.qcow2"} {
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(dir, f), "1M")
	}
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(dir, "disks", "ghost.qcow2"), "1M")
	blank := filepath.Join(dir, "blank", fmt.Sprintf("ext4-%d.raw", 2*mib))
	run(t, "qemu-img", "create", "-q", "-f", "raw", blank, "2M")
	problems, err := store.Check(e.ctx, dir)
	if err != nil || len(problems) != 4 {
		t.Fatalf("Check before the sweep: %v, %v; want 4 unreferenced files", problems, err)
	}
	newEnv(t, dir, "") // Configure sweeps
	for _, f := range []string{"disks/.ghost.0123456789abcdef0123456789abcdef.tmp", "bases/0123456789abcdef0123456789abcdef.qcow2", "disks/ghost.qcow2"} {
		if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived the sweep: %v", f, err)
		}
	}
	if _, err := os.Stat(blank); err != nil {
		t.Errorf("the complete blank base was not adopted: %v", err)
	}
	os.Chmod(blank, 0o444) // as the store makes them, for the final check
	if _, err := os.Stat(e.path("kept")); err != nil {
		t.Fatalf("the recorded disk did not survive the sweep: %v", err)
	}
}

// TestGetDiskRefusesNonRegularBacking: GetDisk reads the header of every
// file the disk's chain names (as root, in production). A header that
// names a FIFO or a device must get a clear error at once, not a hang or
// a device read as a disk.
func TestGetDiskRefusesNonRegularBacking(t *testing.T) {
	e := newEnv(t, "", "")
	d := e.create("d", 64*mib)
	orig := d.BackingChain[0].Path
	name := run(t, "qemu-img", "info", "--output=json", d.Path)
	if !strings.Contains(name, `"backing-filename": "../blank/`) {
		t.Fatalf("unexpected backing reference:\n%s", name)
	}
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{fifo, "/dev/zero"} {
		if err := qcow2.SetBacking(d.Path, target, qcow2.FormatRaw); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { _, err := e.disks.GetDisk(e.ctx, "d"); done <- err }()
		select {
		case err := <-done:
			if !errors.Is(err, sdk.ErrInvalidArgument) || !strings.Contains(err.Error(), target) || !strings.Contains(err.Error(), "not a regular file") {
				t.Errorf("GetDisk with backing file %s: %v; want InvalidArgument naming it as not a regular file", target, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("GetDisk with backing file %s does not return", target)
		}
	}
	// Put the reference back so the cleanup check passes.
	rel, err := filepath.Rel(filepath.Dir(d.Path), orig)
	if err != nil {
		t.Fatal(err)
	}
	if err := qcow2.SetBacking(d.Path, rel, qcow2.FormatRaw); err != nil {
		t.Fatal(err)
	}
	if got, err := e.disks.GetDisk(e.ctx, "d"); err != nil || got.BackingChain[0].Path != orig {
		t.Fatalf("after restoring the reference: %+v, %v", got, err)
	}
}
