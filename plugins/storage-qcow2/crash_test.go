package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/boxctl/boxctl/plugins/storage-qcow2/internal/store"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/sdktest"
)

// pluginBin is the plugin binary built once for the tests in this package.
var pluginBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "qcow2-plugin-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pluginBin = filepath.Join(dir, "boxctl-plugin-qcow2")
	cmd := exec.Command("go", "build", "-o", pluginBin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build the plugin: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// proc is one plugin process, started by go-plugin as boxctl starts it.
type proc struct {
	client *plugin.Client
	disks  sdk.DiskBackendClient
	snaps  sdk.SnapshotBackendClient
	log    *syncBuffer
	ctx    context.Context
}

// startPlugin starts the plugin binary on stateDir and configures it
// (which recovers unfinished operations). A non-empty crashAt installs the
// crash hook.
func startPlugin(t *testing.T, stateDir, crashAt string) *proc {
	t.Helper()
	p := launchPlugin(t, crashAt)
	// One Configure configures both roles: one Store serves them.
	if err := p.disks.Configure(p.ctx, &sdk.Config{StateDir: stateDir}); err != nil {
		t.Fatalf("Configure: %v\n%s", err, p.log)
	}
	return p
}

// launchPlugin starts the plugin binary, as boxctl starts it, and
// dispenses its roles, unconfigured.
func launchPlugin(t *testing.T, crashAt string) *proc {
	t.Helper()
	cmd := exec.Command(pluginBin)
	cmd.Env = os.Environ()
	if crashAt != "" {
		cmd.Env = append(cmd.Env, store.CrashEnv+"="+crashAt)
	}
	logs := &syncBuffer{}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake(),
		VersionedPlugins: map[int]plugin.PluginSet{sdk.ProtocolVersion: sdk.ClientPluginSet()},
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Info}),
	})
	t.Cleanup(client.Kill)
	rpc, err := client.Client()
	if err != nil {
		t.Fatalf("start plugin: %v\n%s", err, logs)
	}
	p := &proc{client: client, log: logs}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	p.ctx = ctx
	raw, err := rpc.Dispense(sdk.RoleDisks)
	if err != nil {
		t.Fatal(err)
	}
	p.disks = raw.(sdk.DiskBackendClient)
	if raw, err = rpc.Dispense(sdk.RoleSnapshots); err != nil {
		t.Fatal(err)
	}
	p.snaps = raw.(sdk.SnapshotBackendClient)
	return p
}

// newBinaryStorage is the conformance suites' fresh root over the real
// binary: a new plugin process per check.
func newBinaryStorage(t *testing.T, stateDir string) sdktest.Storage {
	p := launchPlugin(t, "")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("plugin log:\n%s", p.log)
		}
	})
	return sdktest.Storage{Disks: p.disks, Snapshots: p.snaps, Served: true}
}

// TestBinaryDiskBackendConformance runs the DiskBackend suite against the
// plugin binary, as boxctl talks to it.
func TestBinaryDiskBackendConformance(t *testing.T) {
	sdktest.DiskBackendConformance(t, newBinaryStorage)
}

// TestBinarySnapshotBackendConformance runs the SnapshotBackend suite
// against the plugin binary.
func TestBinarySnapshotBackendConformance(t *testing.T) {
	sdktest.SnapshotBackendConformance(t, newBinaryStorage)
}

// TestBinaryCallOrder: the binary refuses role calls before Configure and
// configures its one Store once, whichever role is configured.
func TestBinaryCallOrder(t *testing.T) {
	p := launchPlugin(t, "")
	if _, err := p.disks.ListDisks(p.ctx); !errors.Is(err, sdk.ErrInvalidState) {
		t.Fatalf("ListDisks before Configure: %v; want ErrInvalidState", err)
	}
	if _, err := p.snaps.ListSnapshots(p.ctx, "d"); !errors.Is(err, sdk.ErrInvalidState) {
		t.Fatalf("ListSnapshots before Configure: %v; want ErrInvalidState", err)
	}
	dir := filepath.Join(t.TempDir(), "state")
	if err := p.snaps.Configure(p.ctx, &sdk.Config{StateDir: dir}); err != nil {
		t.Fatal(err)
	}
	// A second Configure, naming another directory, is answered with the
	// first result and changes nothing.
	other := filepath.Join(t.TempDir(), "other")
	if err := p.disks.Configure(p.ctx, &sdk.Config{StateDir: other}); err != nil {
		t.Fatal(err)
	}
	d, err := p.disks.CreateDisk(p.ctx, sdk.CreateDiskRequest{ID: "d", Size: 64 * mib})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(d.Path, dir+"/") {
		t.Fatalf("disk at %s; want it under the first Configure's state dir %s", d.Path, dir)
	}
	if _, err := os.Stat(other); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the second Configure's state dir was touched: %v", err)
	}
}

func (p *proc) path(t *testing.T, id string) string {
	t.Helper()
	info, err := p.disks.GetDisk(p.ctx, id)
	if err != nil {
		t.Fatalf("GetDisk %s: %v", id, err)
	}
	return info.Path
}

func (p *proc) exists(t *testing.T, id string) bool {
	t.Helper()
	_, err := p.disks.GetDisk(p.ctx, id)
	if errors.Is(err, sdk.ErrNotFound) {
		return false
	}
	if err != nil {
		t.Fatalf("GetDisk %s: %v", id, err)
	}
	return true
}

func (p *proc) snapshots(t *testing.T, id string) []string {
	t.Helper()
	list, err := p.snaps.ListSnapshots(p.ctx, id)
	if err != nil {
		t.Fatalf("ListSnapshots %s: %v", id, err)
	}
	var names []string
	for _, sn := range list {
		names = append(names, sn.Name)
	}
	return names
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

const mib = 1 << 20

func qemu(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func write(t *testing.T, path string, pattern byte) {
	t.Helper()
	qemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P "+strconv.Itoa(int(pattern))+" 0 1M", path)
}

// reads reports whether the first MiB of the disk reads as pattern.
func reads(t *testing.T, path string, pattern byte) bool {
	t.Helper()
	out, err := exec.Command("qemu-io", "-r", "-f", "qcow2", "-c", "read -P "+strconv.Itoa(int(pattern))+" 0 1M", path).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "Pattern verification failed") {
		t.Fatalf("qemu-io read %s: %v\n%s", path, err, out)
	}
	return err == nil
}

// scenario is one multi-step operation under test: setup makes the
// before state, op runs the operation, and state says which of the before
// and after states the store is in (failing on anything else).
type scenario struct {
	setup func(t *testing.T, p *proc, dir string)
	op    func(p *proc, dir string) error
	state func(t *testing.T, p *proc) string
}

func scenarios() map[string]scenario {
	create := func(t *testing.T, p *proc, id string) {
		t.Helper()
		_, err := p.disks.CreateDisk(p.ctx, sdk.CreateDiskRequest{ID: id, Size: 64 * mib})
		must(t, "CreateDisk", err)
	}
	snapshot := func(t *testing.T, p *proc, id, name string) {
		t.Helper()
		_, err := p.snaps.CreateSnapshot(p.ctx, id, name)
		must(t, "CreateSnapshot", err)
	}
	return map[string]scenario{
		"create": {
			setup: func(*testing.T, *proc, string) {},
			op: func(p *proc, _ string) error {
				_, err := p.disks.CreateDisk(p.ctx, sdk.CreateDiskRequest{ID: "d1", Size: 64 * mib})
				return err
			},
			state: func(t *testing.T, p *proc) string {
				if !p.exists(t, "d1") {
					return "before"
				}
				raw := filepath.Join(t.TempDir(), "d1.raw")
				qemu(t, "qemu-img", "convert", "-O", "raw", p.path(t, "d1"), raw)
				qemu(t, "/usr/sbin/e2fsck", "-fn", raw)
				return "after"
			},
		},
		"snapshot": {
			setup: func(t *testing.T, p *proc, _ string) {
				create(t, p, "d1")
				write(t, p.path(t, "d1"), 0x11)
			},
			op: func(p *proc, _ string) error { _, err := p.snaps.CreateSnapshot(p.ctx, "d1", "s1"); return err },
			state: func(t *testing.T, p *proc) string {
				if !reads(t, p.path(t, "d1"), 0x11) {
					t.Fatal("d1 lost its data")
				}
				switch names := p.snapshots(t, "d1"); {
				case len(names) == 0:
					return "before"
				case slices.Equal(names, []string{"s1"}):
					write(t, p.path(t, "d1"), 0x22)
					_, err := p.snaps.RestoreSnapshot(p.ctx, "d1", "s1")
					must(t, "RestoreSnapshot", err)
					if !reads(t, p.path(t, "d1"), 0x11) {
						t.Fatal("the recovered snapshot does not restore the data")
					}
					return "after"
				default:
					t.Fatalf("snapshots %v", names)
				}
				return ""
			},
		},
		"restore": {
			setup: func(t *testing.T, p *proc, _ string) {
				create(t, p, "d1")
				write(t, p.path(t, "d1"), 0x11)
				snapshot(t, p, "d1", "s1")
				write(t, p.path(t, "d1"), 0x22)
				snapshot(t, p, "d1", "s2")
				must(t, "RemoveSnapshot", p.snaps.RemoveSnapshot(p.ctx, "d1", "s2")) // so the restore frees a base
				write(t, p.path(t, "d1"), 0x33)
			},
			op: func(p *proc, _ string) error { _, err := p.snaps.RestoreSnapshot(p.ctx, "d1", "s1"); return err },
			state: func(t *testing.T, p *proc) string {
				path := p.path(t, "d1")
				switch {
				case reads(t, path, 0x33):
					return "before"
				case reads(t, path, 0x11):
					return "after"
				}
				t.Fatal("d1 reads neither its current data nor the snapshot's")
				return ""
			},
		},
		"clone": {
			setup: func(t *testing.T, p *proc, _ string) {
				create(t, p, "d1")
				write(t, p.path(t, "d1"), 0x11)
			},
			op: func(p *proc, _ string) error {
				_, err := p.snaps.Clone(p.ctx, sdk.CloneRequest{ID: "d1", NewID: "d2"})
				return err
			},
			state: func(t *testing.T, p *proc) string {
				if !reads(t, p.path(t, "d1"), 0x11) {
					t.Fatal("d1 lost its data")
				}
				if !p.exists(t, "d2") {
					return "before"
				}
				if !reads(t, p.path(t, "d2"), 0x11) {
					t.Fatal("the clone does not hold the source's data")
				}
				write(t, p.path(t, "d2"), 0x22)
				if !reads(t, p.path(t, "d1"), 0x11) {
					t.Fatal("a write into the clone shows in the source")
				}
				return "after"
			},
		},
		"clone-shared": {
			setup: func(t *testing.T, p *proc, _ string) {
				create(t, p, "d1")
				write(t, p.path(t, "d1"), 0x11)
				snapshot(t, p, "d1", "s1")
				write(t, p.path(t, "d1"), 0x22)
			},
			op: func(p *proc, _ string) error {
				_, err := p.snaps.Clone(p.ctx, sdk.CloneRequest{ID: "d1", NewID: "d2", Snapshot: "s1"})
				return err
			},
			state: func(t *testing.T, p *proc) string {
				if !reads(t, p.path(t, "d1"), 0x22) {
					t.Fatal("d1 lost its data")
				}
				if !p.exists(t, "d2") {
					must(t, "RemoveSnapshot without the clone", p.snaps.RemoveSnapshot(p.ctx, "d1", "s1"))
					return "before"
				}
				if !reads(t, p.path(t, "d2"), 0x11) {
					t.Fatal("the clone does not hold the snapshot's data")
				}
				if err := p.snaps.RemoveSnapshot(p.ctx, "d1", "s1"); !errors.Is(err, sdk.ErrInvalidState) {
					t.Fatalf("RemoveSnapshot with a recovered clone depending on it: %v", err)
				}
				return "after"
			},
		},
		"remove": {
			setup: func(t *testing.T, p *proc, _ string) {
				create(t, p, "d1")
				write(t, p.path(t, "d1"), 0x11)
				snapshot(t, p, "d1", "s1")
				write(t, p.path(t, "d1"), 0x22)
				snapshot(t, p, "d1", "s2")
				_, err := p.snaps.Clone(p.ctx, sdk.CloneRequest{ID: "d1", NewID: "d2", Snapshot: "s1"})
				must(t, "Clone", err)
			},
			op: func(p *proc, _ string) error { return p.disks.RemoveDisk(p.ctx, "d1") },
			state: func(t *testing.T, p *proc) string {
				if !reads(t, p.path(t, "d2"), 0x11) {
					t.Fatal("the clone lost its data")
				}
				if !p.exists(t, "d1") {
					return "after"
				}
				if !reads(t, p.path(t, "d1"), 0x22) || !slices.Equal(p.snapshots(t, "d1"), []string{"s1", "s2"}) {
					t.Fatal("d1 is neither removed nor intact")
				}
				return "before"
			},
		},
		"remove-snapshot": {
			setup: func(t *testing.T, p *proc, _ string) {
				create(t, p, "d1")
				write(t, p.path(t, "d1"), 0x11)
				snapshot(t, p, "d1", "s1")
				write(t, p.path(t, "d1"), 0x22)
				snapshot(t, p, "d1", "s2")
				_, err := p.snaps.RestoreSnapshot(p.ctx, "d1", "s1") // so removing s2 frees its base
				must(t, "RestoreSnapshot", err)
			},
			op: func(p *proc, _ string) error { return p.snaps.RemoveSnapshot(p.ctx, "d1", "s2") },
			state: func(t *testing.T, p *proc) string {
				if !reads(t, p.path(t, "d1"), 0x11) {
					t.Fatal("d1 lost its data")
				}
				switch names := p.snapshots(t, "d1"); {
				case slices.Equal(names, []string{"s1", "s2"}):
					return "before"
				case slices.Equal(names, []string{"s1"}):
					return "after"
				default:
					t.Fatalf("snapshots %v", names)
				}
				return ""
			},
		},
		"import": {
			setup: func(t *testing.T, _ *proc, dir string) {
				src := filepath.Join(dir, "import.qcow2")
				qemu(t, "qemu-img", "create", "-f", "qcow2", src, "32M")
				write(t, src, 0x44)
			},
			op: func(p *proc, dir string) error {
				_, err := p.disks.Import(p.ctx, sdk.ImportRequest{ID: "d1", Source: filepath.Join(dir, "import.qcow2")})
				return err
			},
			state: func(t *testing.T, p *proc) string {
				if !p.exists(t, "d1") {
					return "before"
				}
				if !reads(t, p.path(t, "d1"), 0x44) {
					t.Fatal("the imported disk has the wrong content")
				}
				return "after"
			},
		},
		"import-snapshot": {
			setup: func(t *testing.T, p *proc, dir string) {
				create(t, p, "d1")
				write(t, p.path(t, "d1"), 0x11)
				src := filepath.Join(dir, "snap.qcow2")
				qemu(t, "qemu-img", "create", "-f", "qcow2", src, "64M")
				write(t, src, 0x55)
			},
			op: func(p *proc, dir string) error {
				_, err := p.disks.Import(p.ctx, sdk.ImportRequest{ID: "d1", Source: filepath.Join(dir, "snap.qcow2"), Snapshot: "s1"})
				return err
			},
			state: func(t *testing.T, p *proc) string {
				if !reads(t, p.path(t, "d1"), 0x11) {
					t.Fatal("d1 lost its data")
				}
				switch names := p.snapshots(t, "d1"); {
				case len(names) == 0:
					return "before"
				case slices.Equal(names, []string{"s1"}):
					_, err := p.snaps.RestoreSnapshot(p.ctx, "d1", "s1")
					must(t, "RestoreSnapshot", err)
					if !reads(t, p.path(t, "d1"), 0x55) {
						t.Fatal("the imported snapshot does not restore its data")
					}
					return "after"
				default:
					t.Fatalf("snapshots %v", names)
				}
				return ""
			},
		},
	}
}

// TestCrashRecovery kills the real plugin process (through its crash hook)
// at every step of every multi-step operation, starts a new one on the
// same state directory, and checks that the store is consistent, nothing
// leaked, and the operation either did not happen or fully happened.
func TestCrashRecovery(t *testing.T) {
	for _, tool := range []string{"qemu-img", "qemu-io", "/usr/sbin/e2fsck"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: install qemu-utils and e2fsprogs (make deps): %v", tool, err)
		}
	}
	all := scenarios()
	seen := map[string]map[string]bool{}
	ran := 0
	var mu sync.Mutex
	t.Run("point", func(t *testing.T) {
		for _, point := range store.CrashPoints() {
			op := point[:strings.IndexByte(point, ':')]
			sc, ok := all[op]
			if !ok {
				t.Fatalf("no scenario for crash point %s", point)
			}
			t.Run(point, func(t *testing.T) {
				t.Parallel()
				dir := t.TempDir()
				stateDir := filepath.Join(dir, "qcow2")

				setup := startPlugin(t, stateDir, "")
				sc.setup(t, setup, dir)
				setup.client.Kill()

				victim := startPlugin(t, stateDir, point)
				err := sc.op(victim, dir)
				if err == nil {
					t.Fatalf("the operation finished: crash point %s was never reached", point)
				}
				deadline := time.Now().Add(10 * time.Second)
				for !victim.client.Exited() && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
				if !victim.client.Exited() || !strings.Contains(victim.log.String(), "crashing on purpose") {
					t.Fatalf("the plugin did not crash at %s (error %v):\n%s", point, err, victim.log)
				}

				recovered := startPlugin(t, stateDir, "")
				checkStore(t, stateDir)
				state := sc.state(t, recovered)
				mu.Lock()
				ran++
				if seen[op] == nil {
					seen[op] = map[string]bool{}
				}
				seen[op][state] = true
				mu.Unlock()
				t.Logf("%s: recovered to the %s state", point, state)

				// Refcounts are exact: removing every disk frees every base.
				list, err := recovered.disks.ListDisks(recovered.ctx)
				must(t, "ListDisks", err)
				for _, d := range list {
					must(t, "RemoveDisk", recovered.disks.RemoveDisk(recovered.ctx, d.ID))
				}
				checkStore(t, stateDir)
				for _, sub := range []string{"disks", "bases"} {
					if ents, _ := os.ReadDir(filepath.Join(stateDir, sub)); len(ents) != 0 {
						t.Fatalf("after removing every disk %s/ still holds %v", sub, ents)
					}
				}
			})
		}
	})
	// Every operation must recover to the before state for early crashes
	// and to the after state for late ones; seeing only one of them would
	// mean the crash points do not span the operation.
	if ran != len(store.CrashPoints()) {
		return // a -run filter selected some points
	}
	for op, states := range seen {
		if !states["before"] && op != "remove" && op != "remove-snapshot" {
			t.Errorf("%s: no crash point recovered to the before state", op)
		}
		if !states["after"] {
			t.Errorf("%s: no crash point recovered to the after state", op)
		}
	}
}

// checkStore fails unless store.Check finds nothing and every qcow2 file
// passes qemu-img check.
func checkStore(t *testing.T, dir string) {
	t.Helper()
	problems, err := store.Check(context.Background(), dir)
	must(t, "store.Check", err)
	for _, p := range problems {
		t.Errorf("store inconsistent: %s", p)
	}
	disks, _ := filepath.Glob(filepath.Join(dir, "disks", "*"))
	bases, _ := filepath.Glob(filepath.Join(dir, "bases", "*"))
	for _, f := range append(disks, bases...) {
		qemu(t, "qemu-img", "check", "-f", "qcow2", f)
	}
	if t.Failed() {
		t.FailNow()
	}
}

// TestConcurrentPluginProcesses runs three real plugin processes on one
// state directory at once (as three boxctl processes would), each cloning,
// snapshotting, restoring and removing its own disks over shared bases.
func TestConcurrentPluginProcesses(t *testing.T) {
	stateDir := filepath.Join(t.TempDir(), "qcow2")
	first := startPlugin(t, stateDir, "")
	_, err := first.disks.CreateDisk(first.ctx, sdk.CreateDiskRequest{ID: "shared", Size: 64 * mib})
	must(t, "CreateDisk", err)
	write(t, first.path(t, "shared"), 0x5a)
	_, err = first.snaps.CreateSnapshot(first.ctx, "shared", "s")
	must(t, "CreateSnapshot", err)

	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for n := range 3 {
		p := startPlugin(t, stateDir, "")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5 {
				id := fmt.Sprintf("p%d-%d", n, i)
				steps := []func() error{
					func() error {
						_, err := p.snaps.Clone(p.ctx, sdk.CloneRequest{ID: "shared", NewID: id, Snapshot: "s"})
						return err
					},
					func() error {
						_, err := p.disks.CreateDisk(p.ctx, sdk.CreateDiskRequest{ID: id + "-new", Size: 64 * mib})
						return err
					},
					func() error { _, err := p.snaps.CreateSnapshot(p.ctx, id, "x"); return err },
					func() error {
						_, err := p.snaps.Clone(p.ctx, sdk.CloneRequest{ID: id, NewID: id + "-c"})
						return err
					},
					func() error { _, err := p.snaps.RestoreSnapshot(p.ctx, id, "x"); return err },
					func() error { return p.disks.RemoveDisk(p.ctx, id+"-new") },
				}
				for k, step := range steps {
					if err := step(); err != nil {
						errs <- fmt.Errorf("%s step %d: %w", id, k, err)
						return
					}
				}
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
	list, err := first.disks.ListDisks(first.ctx)
	must(t, "ListDisks", err)
	if len(list) != 1+3*5*2 {
		t.Fatalf("%d disks, want %d", len(list), 1+3*5*2)
	}
	for _, d := range list {
		if !reads(t, d.Path, 0x5a) {
			t.Errorf("disk %s lost the shared data", d.ID)
		}
	}
	checkStore(t, stateDir)
}
