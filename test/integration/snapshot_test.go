package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/monitor"
	"github.com/boxctl/boxctl/internal/proc"
)

// startedAndStopped makes a box with a disk (it ran once) and leaves it
// stopped.
func (e *env) startedAndStopped(name string) {
	e.t.Helper()
	e.ok("create", "--name", name, testImage)
	e.ok("start", name)
	e.ok("stop", "-t", "5", name)
}

// snapshotNames lists a box's snapshots through the CLI's JSON.
func (e *env) snapshotNames(box string) []string {
	e.t.Helper()
	var list []core.Snapshot
	if err := json.Unmarshal([]byte(e.ok("snapshot", "ls", "--format", "json", box)), &list); err != nil {
		e.t.Fatal(err)
	}
	names := []string{}
	for _, s := range list {
		names = append(names, s.Name)
	}
	return names
}

// TestSnapshotLifecycleCLI: create (named and not), ls in both formats,
// restore, rm, and the errors a user meets on the way, each leaving the
// snapshots as they were.
func TestSnapshotLifecycleCLI(t *testing.T) {
	e := newEnv(t, "")
	e.ok("create", "--name", "fresh", testImage)
	if _, errs, code := e.cli("snapshot", "create", "fresh", "s0"); code == 0 || !strings.Contains(errs, "never started") {
		t.Fatalf("snapshot of a box without a disk: exit %d, %s", code, errs)
	}

	e.startedAndStopped("web")
	if got := strings.TrimSpace(e.ok("snapshot", "create", "web", "before")); got != "before" {
		t.Fatalf("snapshot create printed %q, want its name", got)
	}
	auto := strings.TrimSpace(e.ok("snapshot", "create", "web"))
	if !strings.HasPrefix(auto, "snap-") {
		t.Fatalf("generated snapshot name %q", auto)
	}
	if got := e.snapshotNames("web"); strings.Join(got, ",") != "before,"+auto {
		t.Fatalf("snapshots %v, want [before %s] (oldest first)", got, auto)
	}
	table := e.ok("snapshot", "ls", "web")
	if !strings.HasPrefix(table, "NAME") || !strings.Contains(table, "before") || !strings.Contains(table, "CREATED") || !strings.Contains(table, "SIZE") {
		t.Fatalf("snapshot ls table:\n%s", table)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"snapshot", "create", "web", "before"}, "already has a snapshot"},
		{[]string{"snapshot", "create", "web", "../x"}, "invalid snapshot name"},
		{[]string{"snapshot", "restore", "web", "nope"}, `no snapshot "nope" (it has before, ` + auto},
		{[]string{"snapshot", "rm", "web", "nope"}, `no snapshot "nope"`},
		{[]string{"snapshot", "ls", "nobox"}, "nobox"},
	} {
		_, errs, code := e.cli(c.args...)
		if code == 0 || !strings.Contains(errs, c.want) {
			t.Errorf("boxctl %s: exit %d, stderr %q, want an error containing %q", strings.Join(c.args, " "), code, errs, c.want)
		}
	}
	if got := e.snapshotNames("web"); len(got) != 2 {
		t.Fatalf("the refused commands changed the snapshots: %v", got)
	}

	// Restore of a running box needs --force, which stops it.
	e.ok("start", "web")
	if _, errs, code := e.cli("snapshot", "restore", "web", "before"); code == 0 || !strings.Contains(errs, "--force") {
		t.Fatalf("restore of a running box: exit %d, %s", code, errs)
	}
	e.ok("snapshot", "restore", "--force", "-t", "5", "web", "before")
	rt := e.runtime()
	if b := e.info(rt, "web"); b.Status != model.StatusStopped {
		t.Fatalf("after restore --force the box is %s, want stopped", b.Status)
	}
	e.ok("snapshot", "restore", "web", auto)
	if got := e.snapshotNames("web"); len(got) != 2 {
		t.Fatalf("restore removed snapshots: %v", got)
	}

	e.ok("snapshot", "rm", "web", "before", auto)
	if got := e.snapshotNames("web"); len(got) != 0 {
		t.Fatalf("after rm: %v", got)
	}
	e.assertConsistent(rt)

	// rm of a box deletes its snapshots and releases the bases they held.
	e.ok("snapshot", "create", "web", "again")
	e.ok("snapshot", "create", "web", "twice")
	bases := filepath.Join(e.home, "plugins-data", "qcow2", "bases", "*.qcow2")
	if held, _ := filepath.Glob(bases); len(held) == 0 {
		t.Fatal("two snapshots hold no base")
	}
	e.ok("rm", "web")
	if held, _ := filepath.Glob(bases); len(held) != 0 {
		t.Fatalf("bases left after the box and its snapshots were removed: %v", held)
	}
	e.assertConsistent(rt)
}

// TestCloneCount: clone --count 3 of a stopped box makes three stopped
// boxes, each with its own disk; a name conflict half-way makes none.
func TestCloneCount(t *testing.T) {
	e := newEnv(t, "")
	e.startedAndStopped("src")
	out := e.ok("clone", "src", "--name", "w", "--count", "3")
	if got := strings.Fields(out); strings.Join(got, ",") != "w-1,w-2,w-3" {
		t.Fatalf("clone printed %q, want w-1 w-2 w-3", out)
	}
	rt := e.runtime()
	disks := map[string]bool{}
	for _, n := range []string{"w-1", "w-2", "w-3"} {
		b := e.info(rt, n)
		if b.Status != model.StatusStopped || !b.DiskCreated || b.ClonedFrom != e.info(rt, "src").ID || b.Pending != "" {
			t.Fatalf("clone %s: %+v", n, b)
		}
		disks[b.DiskID] = true
	}
	if len(disks) != 3 {
		t.Fatalf("the clones share disks: %v", disks)
	}

	// "x-2" is taken: clone --count 3 --name x fails and makes nothing.
	e.ok("create", "--name", "x-2", testImage)
	before := len(e.ok("ls", "-a", "-q"))
	if _, errs, code := e.cli("clone", "src", "--name", "x", "--count", "3"); code == 0 || !strings.Contains(errs, `"x-2" is already in use`) {
		t.Fatalf("clone onto a taken name: exit %d, %s", code, errs)
	}
	if after := len(e.ok("ls", "-a", "-q")); after != before {
		t.Fatalf("a refused clone left boxes behind: %d bytes of IDs before, %d after", before, after)
	}
	if _, errs, code := e.cli("clone", "src", "--count", "0"); code == 0 || !strings.Contains(errs, "at least 1 clone") {
		t.Fatalf("clone --count 0: exit %d, %s", code, errs)
	}

	// A clone from a snapshot depends on it: snapshot rm names it.
	e.ok("snapshot", "create", "src", "base")
	e.ok("clone", "src", "--snapshot", "base", "--name", "from-snap")
	if _, errs, code := e.cli("snapshot", "rm", "src", "base"); code == 0 || !strings.Contains(errs, "from-snap") {
		t.Fatalf("snapshot rm with a dependant clone: exit %d, %s", code, errs)
	}
	e.ok("rm", "from-snap")
	e.ok("snapshot", "rm", "src", "base")
	e.assertConsistent(rt)
}

// TestCloneAllOrNothingOnStorageFailure: the storage plugin dies while it
// makes a clone's disk (its crash-point hook); no clone survives, in this
// command or, at the latest, after the next one's recovery, and the
// storage plugin keeps no disk of theirs.
func TestCloneAllOrNothingOnStorageFailure(t *testing.T) {
	e := newEnv(t, "")
	e.startedAndStopped("src")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The source never wrote to its disk, so each clone shares its base
	// ("clone-shared"): the first dies.
	cmd := e.boxctlCmd(ctx, "clone", "src", "--name", "fail", "--count", "3")
	cmd.Env = append(cmd.Env, "BOXCTL_QCOW2_CRASH_AT=clone-shared:clone-created")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("clone with a storage plugin that dies succeeded:\n%s", out)
	}
	if !strings.Contains(string(out), "fail-1") || !strings.Contains(string(out), "crashed during Clone") {
		t.Errorf("the error does not name the clone that failed:\n%s", out)
	}
	listed := e.ok("ls", "-a", "--format", "{{.Name}}")
	if strings.Contains(listed, "fail") {
		t.Fatalf("clones of a failed clone survive:\n%s", listed)
	}
	rt := e.runtime()
	e.assertConsistent(rt)
	src := e.info(rt, "src")
	all, err := filepath.Glob(filepath.Join(e.home, "plugins-data", "qcow2", "disks", "*.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	templates := e.templateDisks(rt)
	var files []string
	for _, f := range all {
		if !templates[strings.TrimSuffix(filepath.Base(f), ".qcow2")] {
			files = append(files, f)
		}
	}
	if len(files) != 1 || !strings.Contains(files[0], src.DiskID) {
		t.Fatalf("the storage plugin keeps disks %v, want only the source's (%s) besides the templates'", files, src.DiskID)
	}
}

// TestMonitorResumesAnAbandonedBracket: a quiesce bracket whose holder
// goes away without releasing it (a killed boxctl closes its socket), or
// overstays its limit, gets its VM resumed by the box's monitor.
func TestMonitorResumesAnAbandonedBracket(t *testing.T) {
	e := newEnv(t, "")
	e.ok("run", "-d", "--name", "held", testImage)
	rt := e.runtime()
	b := e.info(rt, "held")
	vm := b.Run.VM.PID
	socket := filepath.Join(e.boxDir(b.ID), "monitor.sock")
	// waitPaused waits until the VM process is stopped (paused) or not.
	waitPaused := func(why string, paused bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			st, err := proc.ReadStat(vm)
			if err != nil {
				t.Fatalf("%s: the VM process is gone: %v", why, err)
			}
			if (st.State == 'T') == paused {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the VM is not paused=%v 10 s later (state %c)", why, paused, st.State)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for _, c := range []struct {
		name  string
		limit time.Duration
		// leave ends the hold without a release; else it overstays.
		leave bool
	}{
		{"holder goes", time.Minute, true},
		{"holder overstays", time.Second, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			hctx, cancel := context.WithCancel(ctx)
			release, err := monitor.Hold(hctx, socket, c.limit)
			if err != nil {
				t.Fatal(err)
			}
			// What the bracket's pause does with procvmm: stop the VM process.
			if err := syscall.Kill(vm, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			waitPaused(c.name, true)
			if c.leave {
				cancel() // closes the connection, as a killed holder's kernel does
			}
			waitPaused(c.name, false)
			if err := release(); err == nil && c.leave {
				t.Error("release after the hold's context ended reported success")
			}
			cancel()
		})
	}
	if out := e.ok("exec", "held", "--", "echo", "alive"); strings.TrimSpace(out) != "alive" {
		t.Fatalf("exec after the brackets: %q", out)
	}
}

// switches reads how often the procvmm "VM" of box name had its writable
// disk switched, and the path it runs on now (its RunDir/disks.json).
func (e *env) switches(rt *core.Runtime, name string) (int, string) {
	e.t.Helper()
	b, err := os.ReadFile(filepath.Join(e.boxDir(e.info(rt, name).ID), "disks.json"))
	if err != nil {
		e.t.Fatal(err)
	}
	var rec struct {
		Disks []struct {
			Path     string `json:"Path"`
			Switches int    `json:"switches"`
		} `json:"disks"`
	}
	if err := json.Unmarshal(b, &rec); err != nil || len(rec.Disks) < 2 {
		e.t.Fatalf("disks.json %s: %v", b, err)
	}
	return rec.Disks[1].Switches, rec.Disks[1].Path
}

// TestLiveSnapshotAndCloneSwitchTheDisk: a snapshot and a clone of a
// running box go through the bracket and move the VM onto the disk's new
// top file, once per operation (clone --count 2 switches once).
func TestLiveSnapshotAndCloneSwitchTheDisk(t *testing.T) {
	e := newEnv(t, "")
	e.ok("run", "-d", "--name", "live", testImage)
	_, errs, code := e.cli("snapshot", "create", "live", "s1")
	if code != 0 || !strings.Contains(errs, "frozen") {
		t.Fatalf("snapshot of a running box: exit %d, %s", code, errs)
	}
	rt := e.runtime()
	n, path := e.switches(rt, "live")
	if n != 1 || filepath.Base(path) != e.info(rt, "live").DiskID+".qcow2" {
		t.Fatalf("after a live snapshot: %d switches, top %s", n, path)
	}
	// Over an empty overlay a clone shares the base (no switch): give the
	// overlay data, as a guest's writes would (the double writes none).
	e.writeOverlay(rt, "live")
	e.ok("clone", "live", "--name", "twin", "--count", "2")
	if n, _ := e.switches(rt, "live"); n != 2 {
		t.Fatalf("after a live clone --count 2: %d switches, want 2", n)
	}
	if out := e.ok("exec", "live", "--", "echo", "still"); strings.TrimSpace(out) != "still" {
		t.Fatalf("exec after the brackets: %q", out)
	}
	if b := e.info(rt, "live"); b.Status != model.StatusRunning || b.Pending != "" {
		t.Fatalf("after the brackets: %s pending %q", b.Status, b.Pending)
	}
	e.assertConsistent(rt)
}

// TestLiveSnapshotWhenTheSwitchFails: the VMM refuses the switch: the
// snapshot and the clones are undone, the box runs on, nothing is left.
func TestLiveSnapshotWhenTheSwitchFails(t *testing.T) {
	e := newEnv(t, "plugin \"procvmm\" {\n  config {\n    fail_on = \"SwitchDisk\"\n  }\n}\n")
	e.ok("run", "-d", "--name", "live", testImage)
	if _, errs, code := e.cli("snapshot", "create", "live", "s1"); code == 0 || !strings.Contains(errs, "new disk overlay") {
		t.Fatalf("snapshot with a failing switch: exit %d, %s", code, errs)
	}
	if got := e.snapshotNames("live"); len(got) != 0 {
		t.Fatalf("a failed live snapshot left snapshots %v", got)
	}
	rt := e.runtime()
	e.writeOverlay(rt, "live")
	if _, errs, code := e.cli("clone", "live", "--name", "twin", "--count", "2"); code == 0 || !strings.Contains(errs, "new disk overlay") {
		t.Fatalf("clone with a failing switch: exit %d, %s", code, errs)
	}
	if listed := e.ok("ls", "-a", "--format", "{{.Name}}"); strings.Contains(listed, "twin") {
		t.Fatalf("a failed live clone left boxes:\n%s", listed)
	}
	if n, _ := e.switches(rt, "live"); n != 0 {
		t.Fatalf("%d switches recorded by a VMM that failed them", n)
	}
	if out := e.ok("exec", "live", "--", "echo", "still"); strings.TrimSpace(out) != "still" {
		t.Fatalf("exec after the failed brackets: %q", out)
	}
	e.assertConsistent(rt)
}

// writeOverlay writes 64 KiB into box name's writable disk top file with
// qemu-io, standing in for the guest the procvmm double does not have.
func (e *env) writeOverlay(rt *core.Runtime, name string) {
	e.t.Helper()
	b := e.info(rt, name)
	top := filepath.Join(e.home, "plugins-data", "qcow2", "disks", b.DiskID+".qcow2")
	if out, err := exec.Command("qemu-io", "-c", "write -P 0x5a 0 64k", top).CombinedOutput(); err != nil {
		e.t.Fatalf("qemu-io write %s: %v\n%s", top, err, out)
	}
}

// TestKillDuringSnapshotAndClone kills boxctl (exit 99 through the
// core's crash-point hook, as kill -9 would: no deferred cleanup runs) at
// every step of a live snapshot and a live clone. The next command accepts
// the home, the box runs on (not paused: its monitor resumed it), and
// what was half-made is gone.
func TestKillDuringSnapshotAndClone(t *testing.T) {
	e := newEnv(t, "")
	e.ok("run", "-d", "--name", "live", testImage)
	rt := e.runtime()
	vm := e.info(rt, "live").Run.VM.PID
	for i, point := range core.CrashPoints() {
		op, _, _ := strings.Cut(point, ":")
		if op != "snapshot" && op != "clone" {
			continue // memory captures: TestKillDuringMemoryCaptures
		}
		t.Run(point, func(t *testing.T) {
			e.writeOverlay(rt, "live") // so that a clone freezes the disk and switches
			args := []string{"snapshot", "create", "live", fmt.Sprintf("p%d", i)}
			if op == "clone" {
				args = []string{"clone", "live", "--name", fmt.Sprintf("c%d", i), "--count", "2"}
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := e.boxctlCmd(ctx, args...)
			cmd.Env = append(cmd.Env, "BOXCTL_CRASH_AT="+point)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 99 {
				t.Fatalf("boxctl %v did not crash at %s: %v\n%s", args, point, err, out)
			}
			listed := e.ok("ls", "-a", "--format", "{{.Name}} {{.Status}}")
			if strings.Contains(listed, fmt.Sprintf("c%d-", i)) {
				t.Fatalf("half-made clones survive the next command:\n%s", listed)
			}
			deadline := time.Now().Add(10 * time.Second)
			for {
				st, err := proc.ReadStat(vm)
				if err != nil {
					t.Fatalf("the VM is gone: %v", err)
				}
				if st.State != 'T' {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the VM is still paused 10 s after boxctl died in the bracket")
				}
				time.Sleep(20 * time.Millisecond)
			}
			if got := e.snapshotNames("live"); slices.Contains(got, fmt.Sprintf("p%d", i)) {
				t.Fatalf("a half-made snapshot survives: %v", got)
			}
			b := e.info(e.runtime(), "live")
			if b.Status != model.StatusRunning || b.Pending != "" {
				t.Fatalf("the box is %s, pending %q", b.Status, b.Pending)
			}
			e.assertConsistent(e.runtime())
			if got := strings.TrimSpace(e.ok("exec", "live", "--", "echo", "ok")); got != "ok" {
				t.Fatalf("exec after the crash: %q", got)
			}
		})
	}
	// The box works as before: a snapshot and a clone succeed.
	e.writeOverlay(rt, "live")
	e.ok("snapshot", "create", "live", "after")
	e.ok("clone", "live", "--name", "after")
}
