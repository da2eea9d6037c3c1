package qemuvmm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/guest/vmtest"
	"github.com/boxctl/boxctl/plugins/qemu/internal/qmp"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/guestboot"
)

// switchStore lays disks out as the qcow2 storage plugin does: overlays in
// disks/, frozen states in bases/, the blank ext4 in blank/, each naming its
// backing file relatively, so that a file keeps a valid backing name when it
// moves from disks/ to bases/.
type switchStore struct {
	t                *testing.T
	dir, blank, disk string
	chain            []sdk.ChainFile // below disk, nearest first
	bases            int
}

func newSwitchStore(t *testing.T, dir string) *switchStore {
	t.Helper()
	s := &switchStore{t: t, dir: dir, blank: filepath.Join(dir, "blank", "ext4.raw"), disk: filepath.Join(dir, "disks", "box.qcow2")}
	for _, d := range []string{"blank", "disks", "bases"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	blankExt4(t, s.blank, 64)
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "../blank/ext4.raw", "-F", "raw", s.disk)
	s.chain = []sdk.ChainFile{{Path: s.blank, Format: "raw"}}
	return s
}

func (s *switchStore) spec() sdk.DiskSpec {
	return sdk.DiskSpec{Path: s.disk, Format: "qcow2", Role: sdk.DiskRoleWritable, BackingChain: s.chain}
}

// freeze does the storage plugin's part of a snapshot: the disk's overlay
// becomes bases/bN.qcow2 (0444) and a new empty overlay takes its place. It
// returns the disk as SwitchDisk gets it, and the base.
func (s *switchStore) freeze() (sdk.DiskSpec, string) {
	s.t.Helper()
	s.bases++
	name := fmt.Sprintf("b%d.qcow2", s.bases)
	base := filepath.Join(s.dir, "bases", name)
	if err := os.Rename(s.disk, base); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Chmod(base, 0o444); err != nil {
		s.t.Fatal(err)
	}
	// -u with the size: the base is open in QEMU; the storage plugin writes
	// the header itself and does not open the base either.
	runTool(s.t, "qemu-img", "create", "-q", "-u", "-f", "qcow2", "-b", "../bases/"+name, "-F", "qcow2", s.disk, "64M")
	if err := os.Chmod(s.disk, 0o600); err != nil {
		s.t.Fatal(err)
	}
	s.chain = append([]sdk.ChainFile{{Path: base, Format: "qcow2"}}, s.chain...)
	return s.spec(), base
}

// thaw undoes freeze after a refused switch: the base becomes the disk's
// overlay again.
func (s *switchStore) thaw(base string) {
	s.t.Helper()
	if err := os.Remove(s.disk); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Chmod(base, 0o600); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Rename(base, s.disk); err != nil {
		s.t.Fatal(err)
	}
	s.chain = s.chain[1:]
	s.bases--
}

func guestRun(t *testing.T, ctx context.Context, c *agentclient.Client, script string) string {
	t.Helper()
	var out bytes.Buffer
	res, err := c.Exec(ctx, agentclient.ExecRequest{Argv: []string{"sh", "-c", script}}, nil, &out, &out, nil, nil)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("guest: sh -c %q: %v, exit %d: %s", script, err, res.ExitCode, out.String())
	}
	return out.String()
}

func sha(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// backingChain is `qemu-img info --backing-chain` of path: each file with
// the backing-file name its header holds.
type chainEntry struct {
	Filename        string `json:"filename"`
	Format          string `json:"format"`
	BackingFilename string `json:"backing-filename"`
	BackingFormat   string `json:"backing-filename-format"`
}

func backingChain(t *testing.T, path string) []chainEntry {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "--backing-chain", "--output=json", path).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v: %s", path, err, out)
	}
	var chain []chainEntry
	if err := json.Unmarshal(out, &chain); err != nil {
		t.Fatalf("qemu-img info %s: %v: %s", path, err, out)
	}
	return chain
}

// TestSwitchDiskOfARunningGuest runs the quiesce bracket of a running box's
// snapshot as the core does, twice, on one real guest under TCG, confined
// as a root boxctl confines it: the guest writes /a; freeze, pause, the
// storage step (rename, new overlay), SwitchDisk, resume, thaw; the guest
// writes /b, and /c after a second bracket (which first meets the nodes a
// switch that died half-way leaves). Each switch is retried once: the retry
// succeeds and changes nothing. While the VM runs on, QEMU locks the new
// overlay and no longer the base, which another VM may open. Once the VM
// has stopped, each base is byte for byte what it was at its switch, every
// overlay is a valid qcow2 whose header still names its base relatively
// (QEMU wrote no /dev/fdset name into it), and a VM booted on the final
// chain sees all three files. Refused switches (running VM, bad index,
// wrong file, wrong size, not a qcow2) leave the VM on its old file and the
// overlay as it was.
func TestSwitchDiskOfARunningGuest(t *testing.T) {
	ctx := context.Background()
	dir := shortDir(t)
	store := newSwitchStore(t, dir)
	root := filepath.Join(dir, "root.ext4")
	if err := vmtest.MakeRootDisk(ctx, root); err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(dir, "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	spec := sdk.VMSpec{
		BoxID: "switch", VCPUs: 1, MemoryMiB: 256, RunDir: run,
		Network:    sdk.NetworkSpec{Mode: sdk.NetworkNone},
		KernelArgs: guestboot.Default().Args(),
		Disks: []sdk.DiskSpec{
			{Path: root, Format: "raw", Role: sdk.DiskRoleImage, ReadOnly: true},
			store.spec(),
		},
	}
	if os.Geteuid() == 0 {
		// Root-only files and an unprivileged QEMU: only descriptors the
		// plugin passes reach it.
		for _, f := range []string{root, store.blank, store.disk} {
			if err := os.Chmod(f, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		uid := uint32(0x7ffc0000 + os.Getpid()%0x10000)
		spec.Sandbox = sdk.Sandbox{UID: uid, GID: uid}
	}
	l := launch(t, spec)
	c := l.agent(ctx)
	vm := l.control()
	guestRun(t, ctx, c, "echo A > /a && sync")

	qmpSock := filepath.Join(run, "qmp.sock")
	topNode := func(t *testing.T) string {
		t.Helper()
		raw, err := qmp.Run(ctx, qmpSock, "query-block", nil)
		if err != nil {
			t.Fatal(err)
		}
		var devs []struct {
			Inserted struct {
				Node string `json:"node-name"`
			} `json:"inserted"`
		}
		if err := json.Unmarshal(raw, &devs); err != nil || len(devs) != 2 {
			t.Fatalf("query-block: %v: %s", err, raw)
		}
		return devs[1].Inserted.Node
	}
	// bracket runs freeze, pause, the storage step, SwitchDisk (twice: a
	// retry succeeds and changes nothing), resume and thaw, and returns the
	// base and a copy of it taken at the switch. before runs just before
	// the switch.
	bracket := func(t *testing.T, before func()) (base, copied string) {
		t.Helper()
		if _, err := c.Quiesce(ctx, 0); err != nil {
			t.Fatal(err)
		}
		paused := time.Now()
		if err := l.vmm.Pause(ctx, vm); err != nil {
			t.Fatal(err)
		}
		// Next to the bases, where its relative backing name resolves.
		copied = filepath.Join(dir, "bases", fmt.Sprintf("copy%d.qcow2", store.bases+1))
		runTool(t, "cp", "--sparse=always", store.disk, copied)
		disk, base := store.freeze()
		if before != nil {
			before()
		}
		switched := time.Now()
		err := l.vmm.SwitchDisk(ctx, vm, 1, disk)
		took := time.Since(switched)
		var node string
		if err == nil {
			node = topNode(t)
			if err := l.vmm.SwitchDisk(ctx, vm, 1, disk); err != nil {
				t.Errorf("SwitchDisk again (a retry): %v; want success", err)
			}
			if again := topNode(t); again != node {
				t.Errorf("a second SwitchDisk moved the disk from node %s to %s", node, again)
			}
		}
		if rerr := l.vmm.Resume(ctx, vm); rerr != nil {
			t.Fatal(rerr)
		}
		resumed := time.Since(paused)
		if _, terr := c.Thaw(ctx); terr != nil {
			t.Fatal(terr)
		}
		if err != nil {
			t.Fatalf("SwitchDisk: %v%s", err, l.diag())
		}
		// QEMU holds the new overlay now (its write lock), and not the
		// base any more: another VM (a clone's) can open the base while
		// this one runs.
		if out, err := exec.Command("qemu-img", "info", disk.Path).CombinedOutput(); err == nil || !strings.Contains(string(out), "lock") {
			t.Errorf("qemu-img info of the new overlay while the VM runs: %v: %s; want QEMU's lock to refuse it", err, out)
		}
		runTool(t, "qemu-img", "check", "-q", base)
		t.Logf("SwitchDisk took %s, to node %s; pause to resume %s (with a copy of the disk and a retry for the test)", took.Round(time.Microsecond), node, resumed.Round(time.Microsecond))
		return base, copied
	}

	t.Run("RefusedWhileRunning", func(t *testing.T) {
		disk, base := store.freeze()
		defer store.thaw(base)
		before := sha(t, disk.Path)
		if err := l.vmm.SwitchDisk(ctx, vm, 1, disk); !errors.Is(err, sdk.ErrInvalidState) || !strings.Contains(err.Error(), "pause it first") {
			t.Errorf("SwitchDisk of a running VM: %v; want sdk.ErrInvalidState saying to pause it first", err)
		}
		if sha(t, disk.Path) != before {
			t.Error("a refused SwitchDisk changed the new overlay")
		}
	})

	t.Run("RefusedRequests", func(t *testing.T) {
		if err := l.vmm.Pause(ctx, vm); err != nil {
			t.Fatal(err)
		}
		disk, base := store.freeze()
		before := sha(t, disk.Path)
		wrongSize := filepath.Join(dir, "small.qcow2")
		runTool(t, "qemu-img", "create", "-q", "-u", "-f", "qcow2", "-b", base, "-F", "qcow2", wrongSize, "32M")
		notQcow2 := filepath.Join(dir, "not.qcow2")
		if err := os.WriteFile(notQcow2, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		with := func(f func(d *sdk.DiskSpec)) sdk.DiskSpec {
			d := disk
			d.BackingChain = append([]sdk.ChainFile{}, disk.BackingChain...)
			f(&d)
			return d
		}
		for _, c := range []struct {
			name  string
			index int
			disk  sdk.DiskSpec
			want  string
		}{
			{"ReadOnlyImageDisk", 0, disk, "read-only"},
			{"NoSuchDisk", 5, disk, "no disk vdf"},
			{"NotTheVMsFile", 1, with(func(d *sdk.DiskSpec) { d.BackingChain[0].Path = store.blank; d.BackingChain[0].Format = "qcow2" }), "is not the file the VM's disk vdb has open"},
			{"WrongFormatOfTheVMsFile", 1, with(func(d *sdk.DiskSpec) { d.BackingChain[0].Format = "raw" }), `format "raw"`},
			{"WrongSize", 1, with(func(d *sdk.DiskSpec) { d.Path = wrongSize }), "virtual size is 33554432 bytes"},
			{"NotQcow2", 1, with(func(d *sdk.DiskSpec) { d.Path = notQcow2 }), "not a qcow2 file"},
			{"MissingOverlay", 1, with(func(d *sdk.DiskSpec) { d.Path = filepath.Join(dir, "missing.qcow2") }), "missing.qcow2"},
			{"EmptyChain", 1, with(func(d *sdk.DiskSpec) { d.BackingChain = nil }), "BackingChain is empty"},
		} {
			err := l.vmm.SwitchDisk(ctx, vm, c.index, c.disk)
			if !errors.Is(err, sdk.ErrInvalidArgument) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: SwitchDisk: %v; want sdk.ErrInvalidArgument saying %q", c.name, err, c.want)
			}
		}
		if sha(t, disk.Path) != before {
			t.Error("a refused SwitchDisk changed the new overlay")
		}
		store.thaw(base)
		if err := l.vmm.Resume(ctx, vm); err != nil {
			t.Fatal(err)
		}
		// The VM is on its old file still: what it writes now is there.
		guestRun(t, ctx, c, "echo A2 >> /a && sync")
	})

	var bases, copies []string
	t.Run("Bracket", func(t *testing.T) {
		base, copied := bracket(t, nil)
		bases, copies = append(bases, base), append(copies, copied)
		guestRun(t, ctx, c, "echo B > /b && dd if=/dev/urandom of=/b.bin bs=1M count=4 2>/dev/null && sync")
		if got := guestRun(t, ctx, c, "cat /a /b"); got != "A\nA2\nB\n" {
			t.Errorf("the guest reads %q after the switch, want A, A2 and B", got)
		}
	})

	t.Run("SecondBracket", func(t *testing.T) {
		if len(bases) != 1 {
			t.Skip("the first bracket failed")
		}
		// What a plugin that died half-way through a switch leaves: nodes
		// of the name the next switch uses, attached to nothing.
		leftovers := func() {
			for _, n := range []map[string]any{{"driver": "null-co", "node-name": "vdb-t2-f"}, {"driver": "raw", "node-name": "vdb-t2", "file": "vdb-t2-f"}} {
				if _, err := qmp.Run(ctx, qmpSock, "blockdev-add", n); err != nil {
					t.Fatal(err)
				}
			}
		}
		base, copied := bracket(t, leftovers)
		bases, copies = append(bases, base), append(copies, copied)
		if node := topNode(t); node != "vdb-t2" {
			t.Errorf("after the second switch the disk's top is node %s, want vdb-t2", node)
		}
		guestRun(t, ctx, c, "echo C > /c && rm /b.bin && sync")
	})

	// Stop the guest cleanly: the files are then what QEMU left.
	if err := c.Shutdown(ctx, 0); err != nil {
		t.Fatalf("shutdown: %v%s", err, l.diag())
	}
	select {
	case <-l.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("the VM did not power off%s", l.diag())
	}
	if t.Failed() {
		return
	}

	t.Run("FilesAfterStop", func(t *testing.T) {
		for i, base := range bases {
			if sha(t, base) != sha(t, copies[i]) {
				t.Errorf("%s changed after its switch: the VM wrote to a frozen base", base)
			}
			runTool(t, "qemu-img", "compare", "-q", copies[i], base)
			runTool(t, "qemu-img", "check", "-q", base)
		}
		runTool(t, "qemu-img", "check", "-q", store.disk)
		chain := backingChain(t, store.disk)
		want := []chainEntry{
			{Filename: store.disk, Format: "qcow2", BackingFilename: "../bases/b2.qcow2", BackingFormat: "qcow2"},
			{Filename: bases[1], Format: "qcow2", BackingFilename: "../bases/b1.qcow2", BackingFormat: "qcow2"},
			{Filename: bases[0], Format: "qcow2", BackingFilename: "../blank/ext4.raw", BackingFormat: "raw"},
			{Filename: store.blank, Format: "raw"},
		}
		if len(chain) != len(want) {
			t.Fatalf("backing chain of %s: %+v, want %+v", store.disk, chain, want)
		}
		for i := range want {
			// qemu-img names each file by joining names: disks/../bases/...
			chain[i].Filename = filepath.Clean(chain[i].Filename)
			if chain[i] != want[i] {
				t.Errorf("backing chain of %s, file %d: %+v, want %+v", store.disk, i, chain[i], want[i])
			}
		}
	})

	t.Run("BootOnTheNewChain", func(t *testing.T) {
		run2 := filepath.Join(dir, "run2")
		if err := os.Mkdir(run2, 0o700); err != nil {
			t.Fatal(err)
		}
		spec2 := spec
		spec2.RunDir = run2
		spec2.Disks = []sdk.DiskSpec{spec.Disks[0], store.spec()}
		l2 := launch(t, spec2)
		c2 := l2.agent(ctx)
		if got := guestRun(t, ctx, c2, "cat /a /b /c; ls /b.bin 2>&1 || true"); !strings.HasPrefix(got, "A\nA2\nB\nC\n") || !strings.Contains(got, "No such file") {
			t.Errorf("a VM on the new chain reads %q, want A, A2, B and C, and no /b.bin", got)
		}
		l2.kill()
	})
}

// The names SwitchDisk reads from QEMU's answers: the file under a top node
// (from the node's filename as query-block reports it), and which switch a
// top node is.
func TestSwitchDiskReadsQEMUsNames(t *testing.T) {
	for in, want := range map[string]string{
		"/dev/fdset/4": "/dev/fdset/4",
		`json:{"backing": {"driver": "raw", "file": {"driver": "file", "filename": "/dev/fdset/3"}}, "driver": "qcow2", "file": {"driver": "file", "filename": "/dev/fdset/4"}}`: "/dev/fdset/4",
		`json:{"driver": "qcow2", "file": "vdb-f"}`: "",
		"json:{broken": "",
	} {
		if got := fileOfNode(in); got != want {
			t.Errorf("fileOfNode(%s) = %q, want %q", in, got, want)
		}
	}
	for node, want := range map[string]int{"vdb": 0, "vdb-t1": 1, "vdb-t12": 12, "vdb-b1": -1, "vdb-t": -1, "vdb-t01": -1, "vdb-t-1": -1, "vdc-t1": -1, "vdb-t1-f": -1} {
		if got := switchNumber("vdb", node); got != want {
			t.Errorf("switchNumber(vdb, %s) = %d, want %d", node, got, want)
		}
	}
}
