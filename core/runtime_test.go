package core

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/state"
	"github.com/boxctl/boxctl/sdk"
)

var bg = context.Background()

func TestCreateValidatesAndPersists(t *testing.T) {
	rt, _ := openWithDoubles(t)
	box, err := rt.Create(bg, BoxOptions{Name: "web", Config: model.BoxConfig{Image: "alpine"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := rt.GetInfo(bg, "web")
	if err != nil || b.ID != box.ID() || b.Status != model.StatusConfigured {
		t.Fatalf("created box: %+v %v", b, err)
	}
	// Defaults from the config fill what the box did not say.
	if b.Config.CPUs != 1 || b.Config.MemoryMiB != 512 || b.Config.DiskSize == 0 {
		t.Fatalf("defaults not applied: %+v", b.Config)
	}
	_, err = rt.Create(bg, BoxOptions{Name: "web", Config: model.BoxConfig{Image: "alpine"}})
	errIs(t, "duplicate name", err, ErrAlreadyExists)
	_, err = rt.Create(bg, BoxOptions{Name: box.ID()[:12], Config: model.BoxConfig{Image: "alpine"}})
	errIs(t, "a name that is another box's short ID", err, ErrInvalidArgument)
	for name, c := range map[string]model.BoxConfig{
		"no image":  {},
		"bad name!": {Image: "alpine"},
		"tiny":      {Image: "alpine", MemoryMiB: 10},
		"env":       {Image: "alpine", Env: []string{"NOEQUALS"}},
		"ports":     {Image: "alpine", Ports: []model.PortMapping{{HostPort: 80, GuestPort: 80}, {HostPort: 80, GuestPort: 81}}},
	} {
		n := strings.ReplaceAll(name, " ", "-")
		if name == "bad name!" {
			n = name
		}
		_, err := rt.Create(bg, BoxOptions{Name: n, Config: c})
		errIs(t, "create "+name, err, ErrInvalidArgument)
	}
	list, err := rt.List(bg)
	if err != nil || len(list) != 1 {
		t.Fatalf("refused creates left boxes: %d %v", len(list), err)
	}
	if problems, err := rt.CheckConsistency(bg); err != nil || len(problems) > 0 {
		t.Fatalf("consistency: %v %v", problems, err)
	}
}

func TestGetOrCreateOneBoxForManyCallers(t *testing.T) {
	rt, _ := openWithDoubles(t)
	var wg sync.WaitGroup
	var mu sync.Mutex
	ids := map[string]bool{}
	created := 0
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			box, made, err := rt.GetOrCreate(bg, BoxOptions{Name: "shared", Config: model.BoxConfig{Image: "alpine"}})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			ids[box.ID()] = true
			if made {
				created++
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(ids) != 1 || created != 1 {
		t.Fatalf("16 concurrent GetOrCreate made %d boxes (%d reported created)", len(ids), created)
	}
}

func TestCreateRefusesReferencesThatCannotWork(t *testing.T) {
	rt, _ := openWithDoubles(t)
	_, err := rt.Create(bg, BoxOptions{Config: model.BoxConfig{Image: "bad@@ref"}})
	errIs(t, "malformed reference", err, ErrInvalidArgument)
	_, err = rt.Create(bg, BoxOptions{Config: model.BoxConfig{Image: "oci-layout:/missing"}})
	errIs(t, "missing layout", err, ErrNotFound)
	_, err = rt.Create(bg, BoxOptions{Config: model.BoxConfig{Image: "alpine", Platform: "linux"}})
	errIs(t, "malformed platform", err, ErrInvalidArgument)
	if list, _ := rt.List(bg); len(list) != 0 {
		t.Fatalf("refused creates recorded %d boxes", len(list))
	}
}

// prepare runs the first-start disk preparation of a box, as Start does.
func prepare(t *testing.T, rt *Runtime, ref string) (*model.Box, sdk.VMSpec) {
	t.Helper()
	b, err := rt.GetInfo(bg, ref)
	if err != nil {
		t.Fatal(err)
	}
	spec := sdk.VMSpec{Network: sdk.NetworkSpec{Mode: sdk.NetworkUser}}
	if err := rt.prepareGuest(bg, b, &spec); err != nil {
		t.Fatal(err)
	}
	if b, err = rt.GetInfo(bg, ref); err != nil {
		t.Fatal(err)
	}
	return b, spec
}

func TestFirstStartPreparesImageAndDisk(t *testing.T) {
	rt, p := openWithDoubles(t)
	if _, err := rt.Create(bg, BoxOptions{Name: "a", Config: model.BoxConfig{Image: "alpine"}}); err != nil {
		t.Fatal(err)
	}
	b, spec := prepare(t, rt, "a")
	if !b.DiskCreated || b.ImageDigest == "" || b.Image == nil || len(b.Image.Cmd) != 1 {
		t.Fatalf("record after preparation: %+v", b)
	}
	if len(spec.Disks) != 2 || spec.Disks[0].Role != sdk.DiskRoleImage || !spec.Disks[0].ReadOnly || spec.Disks[1].Role != sdk.DiskRoleWritable {
		t.Fatalf("disks: %+v", spec.Disks)
	}
	for transport, wants := range map[sdk.AgentTransport][]string{
		sdk.AgentSerial: {"boxctl.serial=boxctl.agent", "boxctl.vsock_port=0"},
		sdk.AgentVsock:  {"boxctl.serial=none", "boxctl.vsock_port=1024"},
		"":              {"boxctl.serial=boxctl.agent", "boxctl.vsock_port=1024"},
	} {
		args := strings.Join(bootArgs(spec, "h1", transport), " ")
		for _, want := range append([]string{"boxctl.root=vda", "boxctl.data=vdb", "boxctl.ip=10.0.2.15/24", "boxctl.gw=10.0.2.2", "boxctl.dns=10.0.2.3", "boxctl.hostname=h1"}, wants...) {
			if !strings.Contains(args, want) {
				t.Errorf("boot arguments for transport %q: %q lack %s", transport, args, want)
			}
		}
	}
	// The image is in use: removal is refused, prune keeps it.
	_, err := rt.RemoveImage(bg, "alpine", false)
	errIs(t, "remove an image in use", err, ErrInvalidState)
	if _, err := rt.PruneImages(bg, true); err != nil {
		t.Fatal(err)
	}
	if _, err := p.images.GetImage(bg, b.ImageDigest); err != nil {
		t.Fatalf("prune removed an image a box uses: %v", err)
	}
	// A missing image comes back from the image plugin as the runtime's
	// ErrNotFound: one vocabulary.
	_, err = rt.RemoveImage(bg, "nosuchimage", false)
	errIs(t, "remove a missing image", err, ErrNotFound)
	// Removing the box releases its disk.
	if err := rt.Remove(bg, "a", RemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	if len(p.disks.removed) != 1 || p.disks.removed[0] != b.DiskID {
		t.Fatalf("disks removed: %v", p.disks.removed)
	}
}

func TestImageResolvedOnceForCreateAndStart(t *testing.T) {
	rt, p := openWithDoubles(t)
	if _, err := rt.EnsureImage(bg, "alpine", "", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Create(bg, BoxOptions{Name: "a", Config: model.BoxConfig{Image: "alpine"}}); err != nil {
		t.Fatal(err)
	}
	prepare(t, rt, "a")
	if p.images.pulls != 1 {
		t.Fatalf("the image was pulled %d times", p.images.pulls)
	}
}

func TestDiskChainOutsideTheStoreIsRefused(t *testing.T) {
	rt, p := openWithDoubles(t)
	if _, err := rt.Create(bg, BoxOptions{Name: "a", Config: model.BoxConfig{Image: "alpine"}}); err != nil {
		t.Fatal(err)
	}
	prepare(t, rt, "a")
	b, _ := rt.GetInfo(bg, "a")
	p.disks.mu.Lock()
	d := p.disks.disks[b.DiskID]
	d.BackingChain = []sdk.BackingFile{{Path: "/etc/passwd", Format: "raw"}}
	p.disks.disks[b.DiskID] = d
	p.disks.mu.Unlock()
	spec := sdk.VMSpec{}
	err := rt.prepareGuest(bg, b, &spec)
	errIs(t, "a backing file outside the store", err, ErrInvalidState)
	if !strings.Contains(err.Error(), "/etc/passwd") {
		t.Fatalf("the refusal does not name the file: %v", err)
	}
}

func TestCloneOfAStoppedBoxAndTheGuardOnItsSource(t *testing.T) {
	rt, _ := openWithDoubles(t)
	if _, err := rt.Create(bg, BoxOptions{Name: "src", Config: model.BoxConfig{Image: "alpine"}}); err != nil {
		t.Fatal(err)
	}
	prepare(t, rt, "src")
	// Stopped, as after its first run.
	if err := rt.store.Update(bg, func(tx *state.Tx) error {
		b, _ := tx.ResolveBox("src")
		b.Status = model.StatusStopped
		return tx.PutBox(b)
	}); err != nil {
		t.Fatal(err)
	}
	clone, err := rt.Clone(bg, "src", BoxOptions{Name: "copy"})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := rt.GetInfo(bg, clone.ID())
	src, _ := rt.GetInfo(bg, "src")
	if c.Status != model.StatusStopped || !c.DiskCreated || c.ClonedFrom != src.ID || c.ImageDigest != src.ImageDigest {
		t.Fatalf("clone record: %+v", c)
	}
	err = rt.Remove(bg, "src", RemoveOptions{})
	errIs(t, "remove a box clones depend on", err, ErrInvalidState)
	if !strings.Contains(err.Error(), "copy") {
		t.Fatalf("the refusal does not name the clone: %v", err)
	}
}

func TestPauseNamesTheVMMThatCannot(t *testing.T) {
	rt, _ := openWithDoubles(t)
	if _, err := rt.Create(bg, BoxOptions{Name: "a", Config: model.BoxConfig{Image: "alpine"}}); err != nil {
		t.Fatal(err)
	}
	if err := rt.store.Update(bg, func(tx *state.Tx) error {
		b, _ := tx.ResolveBox("a")
		b.Status = model.StatusRunning
		b.Run = &model.Run{ID: "r"}
		return tx.PutBox(b)
	}); err != nil {
		t.Fatal(err)
	}
	err := rt.Pause(bg, "a")
	errIs(t, "pause with a VMM that cannot", err, ErrUnsupported)
	if !strings.Contains(err.Error(), "memvmm") {
		t.Fatalf("the error does not name the VMM: %v", err)
	}
}

func TestShutdownRefusesNewWork(t *testing.T) {
	rt, _ := openWithDoubles(t)
	if _, err := rt.Shutdown(bg, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Shutdown(bg, 0); err != nil {
		t.Fatalf("second shutdown: %v", err)
	}
	_, err := rt.Create(bg, BoxOptions{Config: model.BoxConfig{Image: "alpine"}})
	errIs(t, "create after shutdown", err, ErrShutDown)
	_, err = rt.EnsureImage(bg, "alpine", "", nil)
	errIs(t, "pull after shutdown", err, ErrShutDown)
}
