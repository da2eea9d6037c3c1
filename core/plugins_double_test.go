package core

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/sdk"
)

// memPluginsDouble is a TEST DOUBLE of the runtime's plugins: in-memory
// implementations of the sdk's VMM, DiskBackend, SnapshotBackend and
// ImageSource, called directly instead of through plugin processes, so the
// runtime's own logic (validation, records, references, refusals) is unit
// tested without starting a process. Disk and image "files" are small files
// in the plugins' stores under the home, where the runtime checks them.
type memPluginsDouble struct {
	vmm    *memVMMDouble
	disks  *memDisksDouble
	images *memImagesDouble

	mu    sync.Mutex
	calls int64
}

func newMemPluginsDouble(home string) *memPluginsDouble {
	return &memPluginsDouble{
		vmm:    &memVMMDouble{},
		disks:  &memDisksDouble{dir: filepath.Join(home, "plugins-data", "memstore"), disks: map[string]sdk.Disk{}},
		images: &memImagesDouble{dir: filepath.Join(home, "plugins-data", "memimages"), images: map[string]sdk.Image{}},
	}
}

func (p *memPluginsDouble) count() {
	p.mu.Lock()
	p.calls++
	p.mu.Unlock()
}

func (p *memPluginsDouble) VMM(context.Context) (sdk.VMMClient, error) { p.count(); return p.vmm, nil }
func (p *memPluginsDouble) VMMName(context.Context) (string, error)    { return "memvmm", nil }
func (p *memPluginsDouble) NamedVMM(ctx context.Context, name string) (sdk.VMMClient, sdk.Info, error) {
	if name != "memvmm" {
		return nil, sdk.Info{}, fmt.Errorf("plugin %q: %w", name, sdk.ErrNotFound)
	}
	p.count()
	info, err := p.vmm.Info(ctx)
	return p.vmm, info, err
}
func (p *memPluginsDouble) Disks(context.Context) (sdk.DiskBackendClient, error) {
	p.count()
	return p.disks, nil
}
func (p *memPluginsDouble) Snapshots(context.Context) (sdk.SnapshotBackendClient, error) {
	p.count()
	return p.disks, nil
}
func (p *memPluginsDouble) Images(context.Context) (sdk.ImageSourceClient, error) {
	p.count()
	return p.images, nil
}
func (p *memPluginsDouble) Info(ctx context.Context, role string) (sdk.Info, error) {
	switch role {
	case sdk.RoleVMM:
		return p.vmm.Info(ctx)
	case sdk.RoleImages:
		return p.images.Info(ctx)
	}
	return p.disks.Info(ctx)
}
func (p *memPluginsDouble) Ready(context.Context, ...string) error { return nil }
func (p *memPluginsDouble) Counts() (int64, int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return 0, p.calls
}
func (p *memPluginsDouble) Close() {}

// memVMMDouble plans a VM it never runs.
type memVMMDouble struct {
	canPause bool
	plans    []sdk.VMSpec
}

func (v *memVMMDouble) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "memvmm", Capabilities: sdk.Capabilities{Pause: v.canPause}}, nil
}
func (v *memVMMDouble) Configure(context.Context, *sdk.Config) error { return nil }
func (v *memVMMDouble) Plan(_ context.Context, spec sdk.VMSpec) (sdk.LaunchPlan, error) {
	v.plans = append(v.plans, spec)
	return sdk.LaunchPlan{Argv: []string{"/bin/true"}, Handle: []byte("h")}, nil
}
func (v *memVMMDouble) Stop(context.Context, sdk.VM, bool) error { return nil }
func (v *memVMMDouble) Pause(context.Context, sdk.VM) error      { return nil }
func (v *memVMMDouble) Resume(context.Context, sdk.VM) error     { return nil }
func (v *memVMMDouble) SwitchDisk(context.Context, sdk.VM, int, sdk.DiskSpec) error {
	return sdk.ErrUnsupported
}
func (v *memVMMDouble) Metrics(context.Context, sdk.VM) (sdk.Metrics, error) {
	return sdk.Metrics{}, nil
}
func (v *memVMMDouble) SaveState(context.Context, sdk.VM, string) (sdk.SavedState, error) {
	return sdk.SavedState{}, sdk.ErrUnsupported
}
func (v *memVMMDouble) StateInputs(context.Context, sdk.VMSpec) (map[string]string, error) {
	return nil, sdk.ErrUnsupported
}
func (v *memVMMDouble) CheckHost(context.Context) (sdk.HostReport, error) {
	return sdk.HostReport{}, sdk.ErrUnsupported
}

// memDisksDouble keeps disks as small files, clones by copying.
type memDisksDouble struct {
	mu      sync.Mutex
	dir     string
	disks   map[string]sdk.Disk
	removed []string
}

func (d *memDisksDouble) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "memstore", Capabilities: sdk.Capabilities{Snapshots: true, CloneO1: true}}, nil
}
func (d *memDisksDouble) Configure(context.Context, *sdk.Config) error { return nil }
func (d *memDisksDouble) CreateDisk(_ context.Context, req sdk.CreateDiskRequest) (sdk.Disk, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.disks[req.ID]; ok {
		return sdk.Disk{}, fmt.Errorf("disk %s: %w", req.ID, sdk.ErrAlreadyExists)
	}
	return d.write(req.ID, req.Size)
}
func (d *memDisksDouble) write(id string, size uint64) (sdk.Disk, error) {
	if err := os.MkdirAll(d.dir, 0o700); err != nil {
		return sdk.Disk{}, err
	}
	path := filepath.Join(d.dir, id+".qcow2")
	if err := os.WriteFile(path, []byte("disk "+id), 0o600); err != nil {
		return sdk.Disk{}, err
	}
	disk := sdk.Disk{ID: id, Path: path, Format: "qcow2", VirtualSize: size}
	d.disks[id] = disk
	return disk, nil
}
func (d *memDisksDouble) GetDisk(_ context.Context, id string) (sdk.Disk, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	disk, ok := d.disks[id]
	if !ok {
		return sdk.Disk{}, fmt.Errorf("disk %s: %w", id, sdk.ErrNotFound)
	}
	return disk, nil
}
func (d *memDisksDouble) RemoveDisk(_ context.Context, id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.disks, id)
	d.removed = append(d.removed, id)
	return os.RemoveAll(filepath.Join(d.dir, id+".qcow2"))
}
func (d *memDisksDouble) ListDisks(context.Context) ([]sdk.Disk, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []sdk.Disk
	for _, disk := range d.disks {
		out = append(out, disk)
	}
	return out, nil
}
func (d *memDisksDouble) FileInfo(context.Context, string) (sdk.Disk, error) {
	return sdk.Disk{}, sdk.ErrUnsupported
}
func (d *memDisksDouble) Resize(context.Context, string, uint64) (sdk.Disk, error) {
	return sdk.Disk{}, sdk.ErrUnsupported
}
func (d *memDisksDouble) Export(context.Context, sdk.ExportRequest) (sdk.Disk, error) {
	return sdk.Disk{}, sdk.ErrUnsupported
}
func (d *memDisksDouble) Validate(context.Context, string, uint64) (sdk.Validation, error) {
	return sdk.Validation{}, sdk.ErrUnsupported
}
func (d *memDisksDouble) Import(context.Context, sdk.ImportRequest) (sdk.Disk, error) {
	return sdk.Disk{}, sdk.ErrUnsupported
}
func (d *memDisksDouble) CreateSnapshot(context.Context, string, string) (sdk.Snapshot, error) {
	return sdk.Snapshot{}, sdk.ErrUnsupported
}
func (d *memDisksDouble) ListSnapshots(context.Context, string) ([]sdk.Snapshot, error) {
	return nil, nil
}
func (d *memDisksDouble) RestoreSnapshot(context.Context, string, string) (sdk.Snapshot, error) {
	return sdk.Snapshot{}, sdk.ErrUnsupported
}
func (d *memDisksDouble) RemoveSnapshot(context.Context, string, string) error {
	return sdk.ErrUnsupported
}
func (d *memDisksDouble) Clone(_ context.Context, req sdk.CloneRequest) (sdk.Disk, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	src, ok := d.disks[req.ID]
	if !ok {
		return sdk.Disk{}, fmt.Errorf("disk %s: %w", req.ID, sdk.ErrNotFound)
	}
	return d.write(req.NewID, src.VirtualSize)
}

// memImagesDouble "pulls" any reference that does not contain "missing".
type memImagesDouble struct {
	mu     sync.Mutex
	dir    string
	images map[string]sdk.Image // by digest
	pulls  int
	// canCommit declares the commit capability (Commit itself still fails:
	// the tests using it stop before a commit reaches the plugin).
	canCommit bool
}

func (m *memImagesDouble) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "memimages", Capabilities: sdk.Capabilities{CheckReferences: true, Prune: true, Commit: m.canCommit}}, nil
}
func (m *memImagesDouble) Configure(context.Context, *sdk.Config) error { return nil }
func (m *memImagesDouble) Pull(_ context.Context, req sdk.PullRequest, progress func(sdk.PullEvent)) (sdk.Image, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if strings.Contains(req.Reference, "missing") {
		return sdk.Image{}, fmt.Errorf("image %s: %w", req.Reference, sdk.ErrNotFound)
	}
	m.pulls++
	img := sdk.Image{Digest: "sha256:" + strings.Repeat(fmt.Sprint(len(m.images)), 64)[:64], References: []string{req.Reference},
		Config: sdk.ImageConfig{Cmd: []string{"/bin/sh"}, Env: []string{"PATH=/bin"}}}
	m.images[img.Digest] = img
	if progress != nil {
		progress(sdk.PullEvent{Status: "pulled " + req.Reference})
	}
	return img, nil
}
func (m *memImagesDouble) find(ref string) (sdk.Image, bool) {
	for _, img := range m.images {
		if img.Digest == ref {
			return img, true
		}
		for _, r := range img.References {
			if r == ref {
				return img, true
			}
		}
	}
	return sdk.Image{}, false
}
func (m *memImagesDouble) CheckReference(_ context.Context, req sdk.PullRequest) (string, error) {
	if strings.Contains(req.Reference, "@@") {
		return "", fmt.Errorf("reference %q is malformed: %w", req.Reference, sdk.ErrInvalidArgument)
	}
	if strings.HasPrefix(req.Reference, "oci-layout:") && strings.Contains(req.Reference, "missing") {
		return "", fmt.Errorf("layout %s does not exist: %w", req.Reference, sdk.ErrNotFound)
	}
	return req.Reference, nil
}
func (m *memImagesDouble) GetImage(_ context.Context, ref string) (sdk.Image, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if img, ok := m.find(ref); ok {
		return img, nil
	}
	return sdk.Image{}, fmt.Errorf("image %s is not cached: %w", ref, sdk.ErrNotFound)
}
func (m *memImagesDouble) RootDisk(_ context.Context, ref string) (sdk.RootDisk, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	img, ok := m.find(ref)
	if !ok {
		return sdk.RootDisk{}, fmt.Errorf("image %s: %w", ref, sdk.ErrNotFound)
	}
	if err := os.MkdirAll(m.dir, 0o700); err != nil {
		return sdk.RootDisk{}, err
	}
	path := filepath.Join(m.dir, strings.TrimPrefix(img.Digest, "sha256:")+".ext4")
	if err := os.WriteFile(path, []byte("ext4"), 0o600); err != nil {
		return sdk.RootDisk{}, err
	}
	return sdk.RootDisk{Path: path, Format: "raw", Filesystem: "ext4", Image: img}, nil
}
func (m *memImagesDouble) ListImages(context.Context) ([]sdk.Image, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []sdk.Image
	for _, img := range m.images {
		out = append(out, img)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Digest < out[j].Digest })
	return out, nil
}
func (m *memImagesDouble) RemoveImage(_ context.Context, ref string) (sdk.Removed, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	img, ok := m.find(ref)
	if !ok {
		return sdk.Removed{}, fmt.Errorf("image %s: %w", ref, sdk.ErrNotFound)
	}
	delete(m.images, img.Digest)
	return sdk.Removed{Images: []string{img.Digest}}, nil
}
func (m *memImagesDouble) Prune(_ context.Context, req sdk.PruneRequest) (sdk.Removed, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	keep := map[string]bool{}
	for _, k := range req.Keep {
		keep[k] = true
	}
	var r sdk.Removed
	for d := range m.images {
		if !keep[d] {
			delete(m.images, d)
			r.Images = append(r.Images, d)
		}
	}
	return r, nil
}

func (m *memImagesDouble) ExportImage(context.Context, string, string) error {
	return fmt.Errorf("ExportImage: %w", sdk.ErrUnsupported)
}

// openWithDoubles opens a runtime on a fresh home with the in-memory
// plugin doubles.
func openWithDoubles(t *testing.T) (*Runtime, *memPluginsDouble) {
	t.Helper()
	// t.TempDir's names can be too long for the unix sockets under a home.
	dir, err := os.MkdirTemp("", "bx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	home := filepath.Join(dir, "h")
	cfg := config.Default()
	cfg.VMM, cfg.Storage, cfg.Images = "memvmm", "memstore", "memimages"
	cfg.Sandbox.Enabled = false
	p := newMemPluginsDouble(home)
	rt, err := Open(context.Background(), WithConfig(cfg), WithHome(home), WithPlugins(p),
		WithMonitorBinary("/nonexistent/boxctl"), WithLogger(hclog.NewNullLogger(), nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Close() })
	return rt, p
}

// errIs fails unless err matches want.
func errIs(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: %v, want an error matching %q", what, err, want)
	}
}

func (m *memImagesDouble) Commit(context.Context, sdk.CommitRequest) (sdk.Image, error) {
	return sdk.Image{}, fmt.Errorf("commit: %w by the in-memory image double", sdk.ErrUnsupported)
}

func (m *memImagesDouble) Push(context.Context, sdk.PushRequest, func(sdk.PullEvent)) (string, error) {
	return "", fmt.Errorf("push: %w by the in-memory image double", sdk.ErrUnsupported)
}
