package sdktest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boxctl/boxctl/sdk"
)

// Storage is a storage plugin under test, as a NewStorageFunc returns it.
type Storage struct {
	// Disks is required.
	Disks sdk.DiskBackend
	// Snapshots is nil for a plugin without the SnapshotBackend role.
	Snapshots sdk.SnapshotBackend
	// Served says Disks and Snapshots are clients of a plugin that is
	// served already (a plugin process the NewStorageFunc started and
	// dispensed with sdk.ClientPluginSet); the suite uses them as they
	// are. Otherwise they are the implementation, and the suite serves it
	// in-process through Serve, so every call crosses the sdk's gRPC
	// adapters as it does in boxctl.
	Served bool
}

// NewStorageFunc returns a fresh storage plugin for one conformance check:
// a new instance, not yet configured, that is to keep its state in
// stateDir, an empty directory of that check's own. The suite configures
// it (sdk.Config.StateDir is stateDir) and calls it once per check, so
// checks never see each other's disks. Use t.Cleanup to stop what it
// started.
type NewStorageFunc func(t *testing.T, stateDir string) Storage

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

// WithPluginConfig sets the body of the plugin's config block (HCL) the
// suite configures every instance with (default: empty, the plugin's
// defaults).
func WithPluginConfig(body string) StorageOption {
	return func(s *storageSuite) { s.config = body }
}

type storageSuite struct {
	newStorage NewStorageFunc
	content    DiskContent
	size       uint64
	config     string
}

func newStorageSuite(t *testing.T, nb NewStorageFunc, opts []StorageOption) *storageSuite {
	t.Helper()
	s := &storageSuite{newStorage: nb, size: 64 << 20}
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

// capability is a feature a check needs, named as sdk.Capabilities names
// it, with what gives a plugin the feature.
type capability struct {
	name string
	how  string
	has  func(sdk.Capabilities) bool
}

var (
	capSnapshots = capability{"Snapshots", "serve a sdk.SnapshotBackend", func(c sdk.Capabilities) bool { return c.Snapshots }}
	capClone     = capability{"Clone", "implement sdk.Cloner", func(c sdk.Capabilities) bool { return c.Clone }}
	capResize    = capability{"Resize", "implement sdk.Resizer", func(c sdk.Capabilities) bool { return c.Resize }}
	capExport    = capability{"Export", "implement sdk.Exporter", func(c sdk.Capabilities) bool { return c.Export }}
	capImport    = capability{"Import", "implement sdk.Importer", func(c sdk.Capabilities) bool { return c.Import }}
	capTransfer  = capability{"SnapshotTransfer", "declare it when Export and Import honour the snapshot fields", func(c sdk.Capabilities) bool { return c.SnapshotTransfer }}
)

// storageCheck is one named conformance check.
type storageCheck struct {
	name  string
	needs []capability
	run   func(e *storageEnv)
}

// run runs every check as a subtest on a fresh root.
func (s *storageSuite) run(t *testing.T, checks []storageCheck) {
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			e := s.env(t)
			for _, need := range c.needs {
				if !need.has(e.caps) {
					t.Skipf("the plugin lacks capability %s (%s)", need.name, need.how)
				}
			}
			c.run(e)
		})
	}
}

// Regions of the disks the suite writes patterns into: [off, off+len).
const (
	regionA   = 1 << 20
	regionB   = 3 << 20
	regionLen = 256 << 10
)

// storageEnv is one check's plugin, what it did to it, and helpers that
// fail the check when a step fails.
type storageEnv struct {
	t        *testing.T
	ctx      context.Context
	stateDir string
	disks    sdk.DiskBackendClient
	snaps    sdk.SnapshotBackendClient // nil without the role
	info     sdk.Info
	caps     sdk.Capabilities
	suite    *storageSuite

	mu    sync.Mutex
	steps []string
}

// env makes a fresh root for t: a state directory, a plugin instance
// served (unless it is already) and configured with it, and the failure
// dump.
func (s *storageSuite) env(t *testing.T) *storageEnv {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	stateDir := filepath.Join(t.TempDir(), "state")
	st := s.newStorage(t, stateDir)
	if st.Disks == nil {
		t.Fatal("the NewStorageFunc returned no DiskBackend")
	}
	e := &storageEnv{t: t, ctx: ctx, stateDir: stateDir, suite: s}
	if st.Served {
		var ok bool
		if e.disks, ok = st.Disks.(sdk.DiskBackendClient); !ok {
			t.Fatalf("Storage.Served is set but Disks (%T) is no sdk.DiskBackendClient: return the role client go-plugin dispensed", st.Disks)
		}
		if st.Snapshots != nil {
			if e.snaps, ok = st.Snapshots.(sdk.SnapshotBackendClient); !ok {
				t.Fatalf("Storage.Served is set but Snapshots (%T) is no sdk.SnapshotBackendClient: return the role client go-plugin dispensed", st.Snapshots)
			}
		}
	} else {
		c := Serve(t, sdk.ServeConfig{Disks: st.Disks, Snapshots: st.Snapshots})
		e.disks, e.snaps = c.Disks, c.Snapshots
	}
	// Registered after the plugin's own cleanups, so it runs while the
	// plugin still answers.
	t.Cleanup(e.dumpOnFailure)

	cfg := &sdk.Config{StateDir: stateDir, Filename: "sdktest-storage.hcl", Body: []byte(s.config)}
	e.logf("Configure with state dir %s", stateDir)
	if err := e.disks.Configure(ctx, cfg); err != nil {
		t.Fatalf("Configure (DiskBackend): %v", err)
	}
	if e.snaps != nil {
		// One implementation serving both roles is configured once: the
		// sdk answers this with the first result.
		if err := e.snaps.Configure(ctx, cfg); err != nil {
			t.Fatalf("Configure (SnapshotBackend): %v", err)
		}
	}
	info, err := e.disks.Info(ctx)
	if err != nil {
		t.Fatalf("Info (DiskBackend): %v", err)
	}
	e.info, e.caps = info, info.Capabilities
	if e.snaps != nil {
		sinfo, err := e.snaps.Info(ctx)
		if err != nil {
			t.Fatalf("Info (SnapshotBackend): %v", err)
		}
		// The snapshot role's own features, when another implementation
		// serves it.
		e.caps.Snapshots = e.caps.Snapshots || sinfo.Capabilities.Snapshots
		e.caps.Clone = e.caps.Clone || sinfo.Capabilities.Clone
		e.caps.CloneO1 = e.caps.CloneO1 || sinfo.Capabilities.CloneO1
	}
	if e.caps.Snapshots && e.snaps == nil {
		t.Fatal("the plugin declares Snapshots but the NewStorageFunc returned no SnapshotBackend")
	}
	return e
}

// logf records a step of the check for the failure dump.
func (e *storageEnv) logf(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.steps = append(e.steps, fmt.Sprintf(format, args...))
}

// dumpOnFailure logs what a failed check had set up: its steps, the
// plugin's capabilities, the disks and snapshots the plugin lists now, and
// the state directory's files.
func (e *storageEnv) dumpOnFailure() {
	if !e.t.Failed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var b strings.Builder
	fmt.Fprintf(&b, "storage conformance: %s failed; what it had set up:\n", e.t.Name())
	fmt.Fprintf(&b, "plugin %s %s, capabilities %v\n", e.info.Name, e.info.Version, e.caps.Strings())
	e.mu.Lock()
	fmt.Fprintf(&b, "steps (%d):\n", len(e.steps))
	for i, s := range e.steps {
		fmt.Fprintf(&b, "  %2d. %s\n", i+1, s)
	}
	e.mu.Unlock()
	disks, err := e.disks.ListDisks(ctx)
	if err != nil {
		fmt.Fprintf(&b, "ListDisks now: %v\n", err)
	} else {
		fmt.Fprintf(&b, "ListDisks now (%d):\n", len(disks))
	}
	slices.SortFunc(disks, func(a, b sdk.Disk) int { return strings.Compare(a.ID, b.ID) })
	for _, d := range disks {
		fmt.Fprintf(&b, "  %s: %s %s, %s allocated, %s\n", d.ID, d.Format, sizeString(d.VirtualSize), sizeString(d.AllocatedSize), d.Path)
		for _, bf := range d.BackingChain {
			fmt.Fprintf(&b, "      backed by %s %s %s\n", bf.Format, sizeString(bf.VirtualSize), bf.Path)
		}
		if e.snaps == nil {
			continue
		}
		snaps, err := e.snaps.ListSnapshots(ctx, d.ID)
		if err != nil {
			fmt.Fprintf(&b, "      ListSnapshots: %v\n", err)
		}
		for _, sn := range snaps {
			fmt.Fprintf(&b, "      snapshot %q taken %s, %s\n", sn.Name, sn.CreatedAt.Format(time.RFC3339Nano), sizeString(sn.Size))
		}
	}
	fmt.Fprintf(&b, "state dir %s:\n", e.stateDir)
	const maxFiles = 60
	n := 0
	_ = filepath.WalkDir(e.stateDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if n++; n > maxFiles {
			return filepath.SkipAll
		}
		rel, _ := filepath.Rel(e.stateDir, path)
		var size int64
		if fi, err := d.Info(); err == nil {
			size = fi.Size()
		}
		fmt.Fprintf(&b, "  %s (%d bytes)\n", rel, size)
		return nil
	})
	switch {
	case n == 0:
		fmt.Fprintf(&b, "  (no files)\n")
	case n > maxFiles:
		fmt.Fprintf(&b, "  ... (more files)\n")
	}
	e.t.Log(b.String())
}

func sizeString(n uint64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

func (e *storageEnv) create(id string) sdk.Disk {
	e.t.Helper()
	e.logf("CreateDisk %s of %s", id, sizeString(e.suite.size))
	d, err := e.disks.CreateDisk(e.ctx, sdk.CreateDiskRequest{ID: id, Size: e.suite.size})
	if err != nil {
		e.t.Fatalf("CreateDisk %s: %v", id, err)
	}
	return d
}

func (e *storageEnv) get(id string) sdk.Disk {
	e.t.Helper()
	d, err := e.disks.GetDisk(e.ctx, id)
	if err != nil {
		e.t.Fatalf("GetDisk %s: %v", id, err)
	}
	return d
}

// ids lists the IDs ListDisks returns, sorted.
func (e *storageEnv) ids() []string {
	e.t.Helper()
	list, err := e.disks.ListDisks(e.ctx)
	if err != nil {
		e.t.Fatalf("ListDisks: %v", err)
	}
	ids := []string{}
	for _, d := range list {
		ids = append(ids, d.ID)
	}
	slices.Sort(ids)
	return ids
}

func (e *storageEnv) wantIDs(when string, want ...string) {
	e.t.Helper()
	if want == nil {
		want = []string{}
	}
	if got := e.ids(); !slices.Equal(got, want) {
		e.t.Fatalf("%s ListDisks = %v, want %v", when, got, want)
	}
}

func (e *storageEnv) fill(id string, off int64, p byte) {
	e.t.Helper()
	e.fillAt(e.get(id), off, regionLen, p)
}

func (e *storageEnv) fillAt(d sdk.Disk, off, length int64, p byte) {
	e.t.Helper()
	e.logf("write %#x into %s at [%s, +%s)", p, d.ID, sizeString(uint64(off)), sizeString(uint64(length)))
	if err := e.suite.content.Fill(e.ctx, d, off, length, p); err != nil {
		e.t.Fatalf("write %#x into disk %s at %d: %v", p, d.ID, off, err)
	}
}

func (e *storageEnv) expect(id string, off int64, p byte) {
	e.t.Helper()
	e.expectDisk(e.get(id), off, p)
}

func (e *storageEnv) expectDisk(d sdk.Disk, off int64, p byte) {
	e.t.Helper()
	if err := e.suite.content.Expect(e.ctx, d, off, regionLen, p); err != nil {
		e.t.Fatalf("disk %s (%s) at %d should read %#x: %v", d.ID, d.Path, off, p, err)
	}
}

// reads reports whether disk id reads as p at off (for checks that want
// content gone).
func (e *storageEnv) reads(id string, off int64, p byte) bool {
	e.t.Helper()
	return e.suite.content.Expect(e.ctx, e.get(id), off, regionLen, p) == nil
}

func (e *storageEnv) snapshot(id, name string) sdk.Snapshot {
	e.t.Helper()
	e.logf("CreateSnapshot %s %q", id, name)
	sn, err := e.snaps.CreateSnapshot(e.ctx, id, name)
	if err != nil {
		e.t.Fatalf("CreateSnapshot %s %q: %v", id, name, err)
	}
	return sn
}

func (e *storageEnv) restore(id, name string) {
	e.t.Helper()
	e.logf("RestoreSnapshot %s %q", id, name)
	if _, err := e.snaps.RestoreSnapshot(e.ctx, id, name); err != nil {
		e.t.Fatalf("RestoreSnapshot %s %q: %v", id, name, err)
	}
}

func (e *storageEnv) removeSnapshot(id, name string) {
	e.t.Helper()
	e.logf("RemoveSnapshot %s %q", id, name)
	if err := e.snaps.RemoveSnapshot(e.ctx, id, name); err != nil {
		e.t.Fatalf("RemoveSnapshot %s %q: %v", id, name, err)
	}
}

func (e *storageEnv) clone(id, newID, snap string) sdk.Disk {
	e.t.Helper()
	e.logf("Clone %s (snapshot %q) to %s", id, snap, newID)
	d, err := e.snaps.Clone(e.ctx, sdk.CloneRequest{ID: id, NewID: newID, Snapshot: snap})
	if err != nil {
		e.t.Fatalf("Clone %s -> %s (snapshot %q): %v", id, newID, snap, err)
	}
	return d
}

func (e *storageEnv) remove(id string) {
	e.t.Helper()
	e.logf("RemoveDisk %s", id)
	if err := e.disks.RemoveDisk(e.ctx, id); err != nil {
		e.t.Fatalf("RemoveDisk %s: %v", id, err)
	}
}

func (e *storageEnv) export(id, dest, format string) sdk.Disk {
	e.t.Helper()
	e.logf("Export %s to %s as %q", id, dest, format)
	d, err := e.disks.Export(e.ctx, sdk.ExportRequest{ID: id, Dest: dest, Format: format})
	if err != nil {
		e.t.Fatalf("Export %s to %s (%q): %v", id, dest, format, err)
	}
	return d
}

func (e *storageEnv) snapshotNames(id string) []string {
	e.t.Helper()
	list, err := e.snaps.ListSnapshots(e.ctx, id)
	if err != nil {
		e.t.Fatalf("ListSnapshots %s: %v", id, err)
	}
	names := []string{}
	for _, sn := range list {
		names = append(names, sn.Name)
	}
	return names
}

func (e *storageEnv) wantSnapshots(when, id string, want ...string) {
	e.t.Helper()
	if want == nil {
		want = []string{}
	}
	if got := e.snapshotNames(id); !slices.Equal(got, want) {
		e.t.Fatalf("%s ListSnapshots %s = %v, want %v (oldest first)", when, id, got, want)
	}
}

// concurrently runs fn(0) .. fn(n-1) at the same time and fails the check
// (after all returned) with every error.
func (e *storageEnv) concurrently(n int, fn func(i int) error) {
	e.t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(i)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			e.t.Error(err)
		}
	}
	if e.t.Failed() {
		e.t.FailNow()
	}
}

// wantErr records a call the check expects to fail and fails the check
// unless err matches one of kinds.
func (e *storageEnv) wantErr(what string, err error, kinds ...error) {
	e.t.Helper()
	e.logf("%s: %v", what, err)
	for _, k := range kinds {
		if errors.Is(err, k) {
			return
		}
	}
	e.t.Fatalf("%s: got error %v, want one of %v", what, err, kinds)
}

// DiskBackendConformance runs the DiskBackend contract (storage.proto)
// against a plugin: create, get, list and remove with their idempotency
// and errors, resize, export and import where the plugin has them, and
// concurrent operations on different disks. Each check is a subtest on a
// fresh root (see the package doc).
func DiskBackendConformance(t *testing.T, newStorage NewStorageFunc, opts ...StorageOption) {
	newStorageSuite(t, newStorage, opts).run(t, diskChecks())
}

// SnapshotBackendConformance runs the SnapshotBackend contract
// (storage.proto), modelled on containerd's snapshotter semantics:
// snapshots are immutable points in time, restore discards later changes
// and keeps the snapshot, clones are independent copies, and a snapshot
// cannot be removed while a clone made from it depends on it. Each check
// is a subtest on a fresh root (see the package doc).
func SnapshotBackendConformance(t *testing.T, newStorage NewStorageFunc, opts ...StorageOption) {
	newStorageSuite(t, newStorage, opts).run(t, snapshotChecks())
}
