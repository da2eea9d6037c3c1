package sdktest_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/hcl/v2"

	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/sdktest"
)

// exampleImages is a minimal ImageSource used to exercise the sdk's gRPC
// glue: the subject under test is the wire, not this implementation.
type exampleImages struct {
	Tag string `hcl:"tag,optional"`
}

func (e *exampleImages) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "example", Version: "1.2.3", Capabilities: sdk.Capabilities{Registry: true}}, nil
}

func (e *exampleImages) Configure(_ context.Context, cfg *sdk.Config) error {
	return cfg.Decode(e)
}

func (e *exampleImages) Pull(_ context.Context, req sdk.PullRequest, progress func(sdk.PullEvent)) (sdk.Image, error) {
	if req.Reference == "missing" {
		return sdk.Image{}, fmt.Errorf("image %q: %w", req.Reference, sdk.ErrNotFound)
	}
	for i := range 3 {
		progress(sdk.PullEvent{Layer: &sdk.LayerProgress{Digest: "sha256:l", Done: uint64(i)}})
	}
	return sdk.Image{Digest: "sha256:abc", References: []string{req.Reference + ":" + e.Tag}}, nil
}

func (e *exampleImages) GetImage(context.Context, string) (sdk.Image, error) {
	return sdk.Image{}, errors.New("disk on fire")
}

func (e *exampleImages) RootDisk(context.Context, string) (sdk.RootDisk, error) {
	return sdk.RootDisk{}, sdk.ErrUnsupported
}

func (e *exampleImages) ListImages(context.Context) ([]sdk.Image, error) {
	return []sdk.Image{{Digest: "sha256:1"}, {Digest: "sha256:2"}}, nil
}

func (e *exampleImages) RemoveImage(context.Context, string) (sdk.Removed, error) {
	return sdk.Removed{}, fmt.Errorf("in use: %w", sdk.ErrInvalidState)
}

func (e *exampleImages) Prune(context.Context, sdk.PruneRequest) (sdk.Removed, error) {
	return sdk.Removed{Reclaimed: 7}, nil
}

func TestImageSourceOverTheWire(t *testing.T) {
	impl := &exampleImages{}
	c := sdktest.Serve(t, sdk.ServeConfig{Images: impl})
	ctx := context.Background()

	info, err := c.Images.Info(ctx)
	if err != nil || info.Name != "example" || len(info.ProtocolVersions) != 1 || !info.Capabilities.Registry || !info.Capabilities.Prune {
		t.Fatalf("info: %+v %v", info, err)
	}
	src := []byte("\n  tag = \"v1\"\n")
	if err := c.Images.Configure(ctx, &sdk.Config{Filename: "c.hcl", Body: src, BodyStart: hcl.Pos{Line: 3, Column: 11, Byte: 40}}); err != nil {
		t.Fatal(err)
	}
	var events int
	img, err := c.Images.Pull(ctx, sdk.PullRequest{Reference: "alpine"}, func(sdk.PullEvent) { events++ })
	if err != nil || events != 3 || img.References[0] != "alpine:v1" {
		t.Fatalf("pull: %v events=%d img=%+v", err, events, img)
	}
	if _, err := c.Images.Pull(ctx, sdk.PullRequest{Reference: "missing"}, nil); !errors.Is(err, sdk.ErrNotFound) || !strings.Contains(err.Error(), `image "missing"`) {
		t.Fatalf("typed error lost on the wire: %v", err)
	}
	if _, err := c.Images.RemoveImage(ctx, "x"); !errors.Is(err, sdk.ErrInvalidState) {
		t.Fatalf("remove: %v", err)
	}
	if _, err := c.Images.RootDisk(ctx, "x"); !errors.Is(err, sdk.ErrUnsupported) {
		t.Fatalf("rootdisk: %v", err)
	}
	_, err = c.Images.GetImage(ctx, "x")
	var re *sdk.RemoteError
	if !errors.As(err, &re) || re.Error() != "disk on fire" || errors.Is(err, sdk.ErrNotFound) {
		t.Fatalf("untyped error: %v", err)
	}
	if imgs, err := c.Images.ListImages(ctx); err != nil || len(imgs) != 2 {
		t.Fatalf("list: %v %v", imgs, err)
	}
	if r, err := c.Images.Prune(ctx, sdk.PruneRequest{}); err != nil || r.Reclaimed != 7 {
		t.Fatalf("prune: %+v %v", r, err)
	}
}

func TestConfigDiagnosticsKeepTheirPosition(t *testing.T) {
	c := sdktest.Serve(t, sdk.ServeConfig{Images: &exampleImages{}})
	src := []byte("\n    tga = \"v1\"\n  ")
	err := c.Images.Configure(context.Background(), &sdk.Config{Filename: "/etc/boxctl/config.hcl", Body: src, BodyStart: hcl.Pos{Line: 7, Column: 11, Byte: 120}})
	var diags hcl.Diagnostics
	if !errors.As(err, &diags) || len(diags) != 1 {
		t.Fatalf("got %v", err)
	}
	d := diags[0]
	if d.Subject == nil || d.Subject.Filename != "/etc/boxctl/config.hcl" || d.Subject.Start.Line != 8 || d.Subject.Start.Column != 5 || !strings.Contains(d.Detail, `Did you mean "tag"?`) {
		t.Fatalf("diagnostic %+v subject %+v", d, d.Subject)
	}
}

// recordingStorage is a storage implementation that records every call
// that reaches it and otherwise does nothing useful: the subject under
// test is the sdk's server (the call order it enforces, the capabilities
// it derives), and the record is what shows which calls got through.
type recordingStorage struct {
	mu           sync.Mutex
	calls        []string
	disks        []sdk.Disk
	configureErr error
}

func (r *recordingStorage) record(call string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call)
}

func (r *recordingStorage) recorded() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

func (r *recordingStorage) Info(context.Context) (sdk.Info, error) {
	r.record("Info")
	return sdk.Info{Name: "recording", Version: "0.0.1"}, nil
}

func (r *recordingStorage) Configure(context.Context, *sdk.Config) error {
	r.record("Configure")
	return r.configureErr
}

func (r *recordingStorage) CreateDisk(_ context.Context, req sdk.CreateDiskRequest) (sdk.Disk, error) {
	r.record("CreateDisk")
	d := sdk.Disk{ID: req.ID, Format: "raw", VirtualSize: req.Size}
	r.mu.Lock()
	r.disks = append(r.disks, d)
	r.mu.Unlock()
	return d, nil
}

func (r *recordingStorage) GetDisk(_ context.Context, id string) (sdk.Disk, error) {
	r.record("GetDisk")
	return sdk.Disk{ID: id}, nil
}

func (r *recordingStorage) RemoveDisk(context.Context, string) error {
	r.record("RemoveDisk")
	return nil
}

func (r *recordingStorage) ListDisks(context.Context) ([]sdk.Disk, error) {
	r.record("ListDisks")
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.disks), nil
}

func (r *recordingStorage) CreateSnapshot(_ context.Context, id, name string) (sdk.Snapshot, error) {
	r.record("CreateSnapshot")
	return sdk.Snapshot{DiskID: id, Name: name}, nil
}

func (r *recordingStorage) ListSnapshots(context.Context, string) ([]sdk.Snapshot, error) {
	r.record("ListSnapshots")
	return nil, nil
}

func (r *recordingStorage) RestoreSnapshot(_ context.Context, id, name string) (sdk.Snapshot, error) {
	r.record("RestoreSnapshot")
	return sdk.Snapshot{DiskID: id, Name: name}, nil
}

func (r *recordingStorage) RemoveSnapshot(context.Context, string, string) error {
	r.record("RemoveSnapshot")
	return nil
}

// cloningStorage adds the optional storage interfaces.
type cloningStorage struct{ recordingStorage }

func (c *cloningStorage) Info(context.Context) (sdk.Info, error) {
	c.record("Info")
	return sdk.Info{Name: "cloning", Version: "0.0.1", Capabilities: sdk.Capabilities{CloneO1: true}}, nil
}

func (c *cloningStorage) Clone(_ context.Context, req sdk.CloneRequest) (sdk.Disk, error) {
	c.record("Clone")
	return sdk.Disk{ID: req.NewID}, nil
}

func (c *cloningStorage) Resize(_ context.Context, id string, _ uint64) (sdk.Disk, error) {
	c.record("Resize")
	return sdk.Disk{ID: id}, nil
}

func (c *cloningStorage) Export(_ context.Context, req sdk.ExportRequest) (sdk.Disk, error) {
	c.record("Export")
	return sdk.Disk{ID: req.ID}, nil
}

func (c *cloningStorage) Validate(context.Context, string, uint64) (sdk.Validation, error) {
	c.record("Validate")
	return sdk.Validation{}, nil
}

func (c *cloningStorage) Import(_ context.Context, req sdk.ImportRequest) (sdk.Disk, error) {
	c.record("Import")
	return sdk.Disk{ID: req.ID}, nil
}

// roleCalls makes one call of each required storage role method through
// the clients and returns their errors by name.
func roleCalls(ctx context.Context, c sdktest.Clients) map[string]error {
	errs := map[string]error{}
	_, errs["CreateDisk"] = c.Disks.CreateDisk(ctx, sdk.CreateDiskRequest{ID: "d", Size: 1 << 20})
	_, errs["GetDisk"] = c.Disks.GetDisk(ctx, "d")
	errs["RemoveDisk"] = c.Disks.RemoveDisk(ctx, "d")
	_, errs["ListDisks"] = c.Disks.ListDisks(ctx)
	_, errs["Resize"] = c.Disks.Resize(ctx, "d", 2<<20)
	_, errs["CreateSnapshot"] = c.Snapshots.CreateSnapshot(ctx, "d", "s")
	_, errs["ListSnapshots"] = c.Snapshots.ListSnapshots(ctx, "d")
	_, errs["RestoreSnapshot"] = c.Snapshots.RestoreSnapshot(ctx, "d", "s")
	errs["RemoveSnapshot"] = c.Snapshots.RemoveSnapshot(ctx, "d", "s")
	_, errs["Clone"] = c.Snapshots.Clone(ctx, sdk.CloneRequest{ID: "d", NewID: "e"})
	return errs
}

// TestRoleCallsBeforeConfigureAreRefused: over the wire, every role call
// before Configure fails with ErrInvalidState and the implementation never
// sees it; Info is allowed.
func TestRoleCallsBeforeConfigureAreRefused(t *testing.T) {
	impl := &cloningStorage{}
	c := sdktest.Serve(t, sdk.ServeConfig{Disks: impl, Snapshots: impl})
	ctx := context.Background()
	if _, err := c.Disks.Info(ctx); err != nil {
		t.Fatalf("Info before Configure: %v", err)
	}
	for call, err := range roleCalls(ctx, c) {
		if !errors.Is(err, sdk.ErrInvalidState) || !strings.Contains(err.Error(), "Configure has not been called") {
			t.Errorf("%s before Configure: %v; want ErrInvalidState saying Configure has not been called", call, err)
		}
	}
	if got := impl.recorded(); !slices.Equal(got, []string{"Info"}) {
		t.Fatalf("calls that reached the implementation: %v; want only Info", got)
	}
	if err := c.Disks.Configure(ctx, &sdk.Config{}); err != nil {
		t.Fatal(err)
	}
	for call, err := range roleCalls(ctx, c) {
		if err != nil {
			t.Errorf("%s after Configure: %v", call, err)
		}
	}
	if n := len(impl.recorded()); n != 2+10 {
		t.Fatalf("after Configure %d calls reached the implementation (%v); want Info, Configure and the 10 role calls", n, impl.recorded())
	}
}

// TestSecondConfigureIsAnsweredWithTheFirstResult: a second Configure, a
// successful or a failed one, does not reach the implementation; after a
// failed one role calls stay refused.
func TestSecondConfigureIsAnsweredWithTheFirstResult(t *testing.T) {
	ctx := context.Background()
	t.Run("success", func(t *testing.T) {
		impl := &recordingStorage{}
		c := sdktest.Serve(t, sdk.ServeConfig{Disks: impl})
		for i := range 3 {
			if err := c.Disks.Configure(ctx, &sdk.Config{StateDir: fmt.Sprint("dir", i)}); err != nil {
				t.Fatalf("Configure #%d: %v", i+1, err)
			}
		}
		if got := impl.recorded(); !slices.Equal(got, []string{"Configure"}) {
			t.Fatalf("calls that reached the implementation: %v; want one Configure", got)
		}
	})
	t.Run("failure", func(t *testing.T) {
		impl := &recordingStorage{configureErr: fmt.Errorf("state dir unusable: %w", sdk.ErrInvalidArgument)}
		c := sdktest.Serve(t, sdk.ServeConfig{Disks: impl})
		for i := range 2 {
			if err := c.Disks.Configure(ctx, &sdk.Config{}); err == nil || !strings.Contains(err.Error(), "state dir unusable") {
				t.Fatalf("Configure #%d: %v; want the first Configure's error", i+1, err)
			}
		}
		if _, err := c.Disks.GetDisk(ctx, "d"); !errors.Is(err, sdk.ErrInvalidState) || !strings.Contains(err.Error(), "Configure failed") {
			t.Fatalf("GetDisk after a failed Configure: %v; want ErrInvalidState saying Configure failed", err)
		}
		if got := impl.recorded(); !slices.Equal(got, []string{"Configure"}) {
			t.Fatalf("calls that reached the implementation: %v; want one Configure", got)
		}
	})
}

// TestTwoRolesOneImplementationConfiguredOnce: a storage implementation
// serving disks and snapshots is configured once, through either role, and
// both roles then work.
func TestTwoRolesOneImplementationConfiguredOnce(t *testing.T) {
	ctx := context.Background()
	impl := &recordingStorage{}
	c := sdktest.Serve(t, sdk.ServeConfig{Disks: impl, Snapshots: impl})
	if err := c.Snapshots.Configure(ctx, &sdk.Config{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Disks.GetDisk(ctx, "d"); err != nil {
		t.Fatalf("the disk role after configuring the snapshot role: %v", err)
	}
	if err := c.Disks.Configure(ctx, &sdk.Config{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Snapshots.ListSnapshots(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	if got := impl.recorded(); !slices.Equal(got, []string{"Configure", "GetDisk", "ListSnapshots"}) {
		t.Fatalf("calls that reached the implementation: %v; want one Configure", got)
	}

	// Two implementations are configured one each.
	disks, snaps := &recordingStorage{}, &recordingStorage{}
	c = sdktest.Serve(t, sdk.ServeConfig{Disks: disks, Snapshots: snaps})
	if err := c.Disks.Configure(ctx, &sdk.Config{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Snapshots.ListSnapshots(ctx, "d"); !errors.Is(err, sdk.ErrInvalidState) {
		t.Fatalf("a snapshot role served by another, unconfigured implementation: %v; want ErrInvalidState", err)
	}
	if err := c.Snapshots.Configure(ctx, &sdk.Config{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Snapshots.ListSnapshots(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	if d, s := disks.recorded(), snaps.recorded(); !slices.Equal(d, []string{"Configure"}) || !slices.Equal(s, []string{"Configure", "ListSnapshots"}) {
		t.Fatalf("disks saw %v, snapshots saw %v", d, s)
	}
}

// TestStorageCapabilitiesFromInterfaces: the sdk declares the optional
// storage features an implementation has (and only those); the plugin's
// own declarations pass through; a missing optional call is
// ErrUnsupported without reaching the implementation.
func TestStorageCapabilitiesFromInterfaces(t *testing.T) {
	ctx := context.Background()
	plain := &recordingStorage{}
	c := sdktest.Serve(t, sdk.ServeConfig{Disks: plain, Snapshots: plain})
	for role, p := range map[string]sdk.Plugin{"disks": c.Disks, "snapshots": c.Snapshots} {
		info, err := p.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Capabilities.Strings(); !slices.Equal(got, []string{"snapshots"}) {
			t.Errorf("%s role of a plain storage: capabilities %v, want [snapshots]", role, got)
		}
	}
	if err := c.Disks.Configure(ctx, &sdk.Config{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Disks.Resize(ctx, "d", 1); !errors.Is(err, sdk.ErrUnsupported) {
		t.Errorf("Resize of a storage without Resizer: %v; want ErrUnsupported", err)
	}
	if _, err := c.Snapshots.Clone(ctx, sdk.CloneRequest{ID: "d", NewID: "e"}); !errors.Is(err, sdk.ErrUnsupported) {
		t.Errorf("Clone of a storage without Cloner: %v; want ErrUnsupported", err)
	}

	full := &cloningStorage{}
	c = sdktest.Serve(t, sdk.ServeConfig{Disks: full, Snapshots: full})
	for _, r := range []struct {
		role string
		p    sdk.Plugin
		want []string
	}{
		{"disks", c.Disks, []string{"clone", "clone-o1", "export", "import", "resize", "snapshots"}},
		// The snapshot role proves only its own interfaces.
		{"snapshots", c.Snapshots, []string{"clone", "clone-o1", "snapshots"}},
	} {
		info, err := r.p.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Capabilities.Strings(); !slices.Equal(got, r.want) {
			t.Errorf("%s role: capabilities %v, want %v", r.role, got, r.want)
		}
	}
	// Disks without a snapshot role.
	c = sdktest.Serve(t, sdk.ServeConfig{Disks: full})
	info, err := c.Disks.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Capabilities.Resize || !info.Capabilities.CloneO1 {
		t.Errorf("capabilities %v", info.Capabilities.Strings())
	}
}

// plainVMM is a VMM without optional features; recordingVMM adds them all
// and records what reaches SwitchDisk.
type plainVMM struct{}

func (plainVMM) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "plain", Version: "0.0.1", Capabilities: sdk.Capabilities{GracefulStop: true, AgentTransport: sdk.AgentVsock}}, nil
}
func (plainVMM) Configure(context.Context, *sdk.Config) error { return nil }
func (plainVMM) Plan(context.Context, sdk.VMSpec) (sdk.LaunchPlan, error) {
	return sdk.LaunchPlan{}, nil
}
func (plainVMM) Stop(context.Context, sdk.VM, bool) error { return nil }

type recordingVMM struct {
	plainVMM
	mu       sync.Mutex
	switches []string
}

func (*recordingVMM) Pause(context.Context, sdk.VM) error  { return nil }
func (*recordingVMM) Resume(context.Context, sdk.VM) error { return nil }
func (*recordingVMM) Metrics(context.Context, sdk.VM) (sdk.Metrics, error) {
	return sdk.Metrics{}, nil
}
func (r *recordingVMM) SwitchDisk(_ context.Context, vm sdk.VM, index int, disk sdk.DiskSpec) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.switches = append(r.switches, fmt.Sprintf("%s %d %d %+v", vm.Handle, vm.PID, index, disk))
	if index == 7 {
		return fmt.Errorf("the VM runs: %w", sdk.ErrInvalidState)
	}
	return nil
}

// TestVMMCapabilitiesFromInterfaces: the sdk declares pause, metrics and
// disk-switch from the optional interfaces (and only those), SwitchDisk
// crosses the wire with its arguments and errors intact, a VMM without it
// answers ErrUnsupported, and requests no VMM could carry out are refused
// before they reach one.
func TestVMMCapabilitiesFromInterfaces(t *testing.T) {
	ctx := context.Background()
	disk := sdk.DiskSpec{Path: "/s/disks/d.qcow2", Format: "qcow2", Role: sdk.DiskRoleWritable,
		BackingChain: []sdk.ChainFile{{Path: "/s/bases/b.qcow2", Format: "qcow2"}, {Path: "/s/blank/e.raw", Format: "raw"}}}
	vm := sdk.VM{Handle: []byte("h"), PID: 42}

	plain := sdktest.Serve(t, sdk.ServeConfig{VMM: plainVMM{}}).VMM
	info, err := plain.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Capabilities.Strings(); !slices.Equal(got, []string{"agent-vsock", "graceful-stop"}) {
		t.Errorf("a plain VMM: capabilities %v, want [agent-vsock graceful-stop]", got)
	}
	if err := plain.Configure(ctx, &sdk.Config{}); err != nil {
		t.Fatal(err)
	}
	if err := plain.SwitchDisk(ctx, vm, 1, disk); !errors.Is(err, sdk.ErrUnsupported) {
		t.Errorf("SwitchDisk of a VMM without DiskSwitcher: %v; want ErrUnsupported", err)
	}

	impl := &recordingVMM{}
	full := sdktest.Serve(t, sdk.ServeConfig{VMM: impl}).VMM
	info, err = full.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Capabilities.Strings(); !slices.Equal(got, []string{"agent-vsock", "disk-switch", "graceful-stop", "metrics", "pause"}) {
		t.Errorf("a VMM with every optional interface: capabilities %v", got)
	}
	if !info.Capabilities.DiskSwitch || !sdk.CapabilitiesOf([]string{"disk-switch"}).DiskSwitch {
		t.Error("the disk-switch capability does not map to Capabilities.DiskSwitch")
	}
	if err := full.SwitchDisk(ctx, vm, 1, disk); !errors.Is(err, sdk.ErrInvalidState) {
		t.Errorf("SwitchDisk before Configure: %v; want ErrInvalidState", err)
	}
	if err := full.Configure(ctx, &sdk.Config{}); err != nil {
		t.Fatal(err)
	}
	if err := full.SwitchDisk(ctx, vm, 1, disk); err != nil {
		t.Fatal(err)
	}
	if err := full.SwitchDisk(ctx, vm, 7, disk); !errors.Is(err, sdk.ErrInvalidState) || !strings.Contains(err.Error(), "the VM runs") {
		t.Errorf("the implementation's error: %v; want it as sent, ErrInvalidState", err)
	}
	for _, c := range []struct {
		name  string
		index int
		edit  func(d *sdk.DiskSpec)
		want  string
	}{
		{"NegativeIndex", -1, func(*sdk.DiskSpec) {}, "index -1"},
		{"RelativePath", 1, func(d *sdk.DiskSpec) { d.Path = "d.qcow2" }, "disk.Path"},
		{"RawOverlay", 1, func(d *sdk.DiskSpec) { d.Format = "raw" }, "disk.Format"},
		{"ReadOnly", 1, func(d *sdk.DiskSpec) { d.ReadOnly = true }, "disk.ReadOnly"},
		{"NoChain", 1, func(d *sdk.DiskSpec) { d.BackingChain = nil }, "BackingChain is empty"},
		{"RelativeChain", 1, func(d *sdk.DiskSpec) { d.BackingChain = []sdk.ChainFile{{Path: "b.qcow2", Format: "qcow2"}} }, "BackingChain[0].Path"},
		{"ChainIsTheOverlay", 1, func(d *sdk.DiskSpec) { d.BackingChain = []sdk.ChainFile{{Path: d.Path, Format: "qcow2"}} }, "is disk.Path"},
	} {
		d := disk
		d.BackingChain = slices.Clone(disk.BackingChain)
		c.edit(&d)
		if err := full.SwitchDisk(ctx, vm, c.index, d); !errors.Is(err, sdk.ErrInvalidArgument) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: SwitchDisk: %v; want ErrInvalidArgument naming %s", c.name, err, c.want)
		}
	}
	impl.mu.Lock()
	defer impl.mu.Unlock()
	want := fmt.Sprintf("h 42 1 %+v", disk)
	if len(impl.switches) != 2 || impl.switches[0] != want {
		t.Errorf("SwitchDisk reached the implementation as %q; want twice, first %q", impl.switches, want)
	}
}
