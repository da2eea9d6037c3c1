package integration

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
)

func opts(name string) core.BoxOptions {
	return core.BoxOptions{Name: name, Config: model.BoxConfig{Image: testImage}}
}

func TestCreatePersistsConfiguredWithDefaults(t *testing.T) {
	e := newEnv(t, "defaults {\n  cpus = 2\n  memory = \"256MiB\"\n}\n")
	ctx := context.Background()
	rt := e.runtime()
	box, err := rt.Create(ctx, opts("web"))
	if err != nil {
		t.Fatal(err)
	}
	// A second runtime (as another process would) sees it.
	b := e.info(e.runtime(), box.ID())
	if b.Status != model.StatusConfigured || b.Name != "web" || b.Config.CPUs != 2 || b.Config.MemoryMiB != 256 {
		t.Fatalf("unexpected record %+v", b)
	}
	if _, err := os.Stat(e.boxDir(box.ID())); err != nil {
		t.Fatalf("box directory: %v", err)
	}
	if _, err := rt.Create(ctx, opts("web")); !errors.Is(err, core.ErrAlreadyExists) {
		t.Fatalf("duplicate name: got %v, want ErrAlreadyExists", err)
	}
	if _, err := rt.Create(ctx, core.BoxOptions{Name: "x", Config: model.BoxConfig{}}); !errors.Is(err, core.ErrInvalidArgument) {
		t.Fatalf("no image: got %v, want ErrInvalidArgument", err)
	}
	if _, err := rt.Create(ctx, core.BoxOptions{Name: "bad name!", Config: model.BoxConfig{Image: "i"}}); !errors.Is(err, core.ErrInvalidArgument) {
		t.Fatalf("bad name: got %v, want ErrInvalidArgument", err)
	}
	e.assertConsistent(rt)
}

func TestGetOrCreateReturnsExistingAndIgnoresOptions(t *testing.T) {
	e := newEnv(t, "")
	ctx := context.Background()
	rt := e.runtime()
	first, created, err := rt.GetOrCreate(ctx, opts("db"))
	if err != nil || !created {
		t.Fatalf("first: created=%v err=%v", created, err)
	}
	o := opts("db")
	o.Config.CPUs = 4
	second, created, err := rt.GetOrCreate(ctx, o)
	if err != nil || created {
		t.Fatalf("second: created=%v err=%v", created, err)
	}
	if second.ID() != first.ID() {
		t.Fatalf("got another box %s, want %s", second.ID(), first.ID())
	}
	if b := e.info(rt, "db"); b.Config.CPUs == 4 {
		t.Fatal("get_or_create applied the new options to the existing box")
	}
}

func TestLookupByIDNamePrefixAndListOrder(t *testing.T) {
	e := newEnv(t, "")
	ctx := context.Background()
	rt := e.runtime()
	var ids []string
	for _, n := range []string{"a", "b", "c"} {
		box, err := rt.Create(ctx, opts(n))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, box.ID())
		time.Sleep(5 * time.Millisecond)
	}
	for _, ref := range []string{ids[1], "b", ids[1][:10]} {
		if b := e.info(rt, ref); b.ID != ids[1] {
			t.Fatalf("lookup %q gave %s", ref, b.ID)
		}
		if ok, err := rt.Exists(ctx, ref); !ok || err != nil {
			t.Fatalf("exists %q: %v %v", ref, ok, err)
		}
	}
	if ok, err := rt.Exists(ctx, "nope"); ok || err != nil {
		t.Fatalf("exists nope: %v %v", ok, err)
	}
	if _, err := rt.GetInfo(ctx, "nope"); !errors.Is(err, core.ErrNotFound) {
		t.Fatalf("get nope: %v", err)
	}
	list, err := rt.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 || list[0].Name != "c" || list[2].Name != "a" {
		t.Fatalf("list not newest first: %v, %v, %v", list[0].Name, list[1].Name, list[2].Name)
	}
	// Remove by prefix.
	if err := rt.Remove(ctx, ids[0][:12], core.RemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	// By its full ID: "a" may now be the start of another box's ID.
	if ok, _ := rt.Exists(ctx, ids[0]); ok {
		t.Fatal("removed box still exists")
	}
	e.assertConsistent(rt)
}

func TestStartStopLifecycle(t *testing.T) {
	e := newEnv(t, "")
	ctx := context.Background()
	rt := e.runtime()
	box, err := rt.Create(ctx, opts("life"))
	if err != nil {
		t.Fatal(err)
	}
	if err := box.Start(ctx, core.Detach(true)); err != nil {
		t.Fatal(err)
	}
	b := e.info(rt, "life")
	if b.Status != model.StatusRunning || !b.Run.VM.Alive() || !b.Run.Monitor.Alive() {
		t.Fatalf("after start: status %s vm %v monitor %v", b.Status, b.Run.VM, b.Run.Monitor)
	}
	pidFile, err := os.ReadFile(e.boxDir(b.ID) + "/vm.pid")
	if err != nil || !strings.HasPrefix(string(pidFile), strconv.Itoa(b.Run.VM.PID)+" ") {
		t.Fatalf("pid file %q: %v", pidFile, err)
	}
	// start is idempotent: same run, same VM.
	if err := box.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if again := e.info(rt, "life"); again.Run.ID != b.Run.ID || again.Run.VM != b.Run.VM {
		t.Fatal("second start replaced the running VM")
	}
	if err := box.Stop(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	waitDead(t, b.Run.VM.PID, 5*time.Second)
	s := e.info(rt, "life")
	if s.Status != model.StatusStopped || s.Run.Exit == nil || s.Run.Exit.Code != 0 || s.Run.Exit.Reason != "stopped" {
		t.Fatalf("after stop: %+v exit %+v", s.Status, s.Run.Exit)
	}
	if _, err := os.Stat(e.boxDir(b.ID) + "/vm.pid"); !os.IsNotExist(err) {
		t.Fatal("pid file left after stop")
	}
	// Stop of a stopped box is a no-op.
	if err := box.Stop(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	// A stopped box starts again.
	if err := box.Start(ctx, core.Detach(true)); err != nil {
		t.Fatal(err)
	}
	if r := e.info(rt, "life"); r.Status != model.StatusRunning || r.Run.ID == b.Run.ID {
		t.Fatalf("restart: %s", r.Status)
	}
	if err := box.Stop(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	m, err := rt.Metrics(ctx)
	if err != nil || m.BoxesCreated != 1 || m.BoxesStopped != 2 {
		t.Fatalf("metrics %+v %v", m, err)
	}
}

func TestRemoveRefusesActiveUnlessForced(t *testing.T) {
	e := newEnv(t, "")
	ctx := context.Background()
	rt := e.runtime()
	box, err := rt.Create(ctx, opts("busy"))
	if err != nil {
		t.Fatal(err)
	}
	if err := box.Start(ctx, core.Detach(true)); err != nil {
		t.Fatal(err)
	}
	vm := e.info(rt, "busy").Run.VM.PID
	if err := rt.Remove(ctx, "busy", core.RemoveOptions{}); !errors.Is(err, core.ErrInvalidState) {
		t.Fatalf("remove running: got %v, want ErrInvalidState", err)
	}
	if !pidAlive(vm) {
		t.Fatal("refused remove killed the VM")
	}
	if err := rt.Remove(ctx, "busy", core.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	waitDead(t, vm, 5*time.Second)
	if _, err := os.Stat(e.boxDir(box.ID())); !os.IsNotExist(err) {
		t.Fatal("box directory left after remove")
	}
	if _, err := os.Stat(e.home + "/locks/" + box.ID() + ".lock"); !os.IsNotExist(err) {
		t.Fatal("lock file left after remove")
	}
	e.assertConsistent(rt)
}

func TestRemoveRefusesBoxWithClonesUnlessForced(t *testing.T) {
	e := newEnv(t, "")
	ctx := context.Background()
	rt := e.runtime()
	src, err := rt.Create(ctx, opts("src"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Clone(ctx, "src", core.BoxOptions{Name: "dst"}); err != nil {
		t.Fatal(err)
	}
	err = rt.Remove(ctx, "src", core.RemoveOptions{})
	if !errors.Is(err, core.ErrInvalidState) || !strings.Contains(err.Error(), "dst") {
		t.Fatalf("remove with clone: got %v", err)
	}
	if err := rt.Remove(ctx, src.ID(), core.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if ok, _ := rt.Exists(ctx, "dst"); !ok {
		t.Fatal("forced remove of the source removed the clone")
	}
}

func TestStopFallsBackToForceForUnresponsiveGuest(t *testing.T) {
	e := newEnv(t, "plugin \"procvmm\" {\n  config {\n    ignore_sigterm = true\n  }\n}\n")
	ctx := context.Background()
	rt := e.runtime()
	box, err := rt.Create(ctx, opts("stubborn"))
	if err != nil {
		t.Fatal(err)
	}
	if err := box.Start(ctx, core.Detach(true)); err != nil {
		t.Fatal(err)
	}
	vm := e.info(rt, "stubborn").Run.VM.PID
	start := time.Now()
	if err := box.Stop(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	waitDead(t, vm, time.Second)
	b := e.info(rt, "stubborn")
	if b.Status != model.StatusStopped || b.Run.Exit.Signal != 9 || b.Run.Exit.Code != 137 {
		t.Fatalf("after forced stop: %s %+v", b.Status, b.Run.Exit)
	}
	t.Logf("stop of an unresponsive guest with -t 1 took %s", time.Since(start))
}

func TestShutdownStopsOwnedBoxesAndRefusesNewWork(t *testing.T) {
	e := newEnv(t, "")
	ctx := context.Background()
	rt := e.runtime()
	var owned []*core.Box
	for _, n := range []string{"o1", "o2", "o3"} {
		b, err := rt.Create(ctx, opts(n))
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Start(ctx); err != nil { // non-detached: tied to this process
			t.Fatal(err)
		}
		owned = append(owned, b)
	}
	det, err := rt.Create(ctx, opts("detached"))
	if err != nil {
		t.Fatal(err)
	}
	if err := det.Start(ctx, core.Detach(true)); err != nil {
		t.Fatal(err)
	}
	// Another process's box (started by a second runtime) is not ours.
	res, err := rt.Shutdown(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Stopped) != 3 || len(res.Failed) != 0 {
		t.Fatalf("shutdown: %+v", res)
	}
	for _, b := range owned {
		if st := e.info(rt, b.ID()).Status; st != model.StatusStopped {
			t.Fatalf("owned box %s is %s after shutdown", b.ID(), st)
		}
	}
	if st := e.info(rt, "detached").Status; st != model.StatusRunning {
		t.Fatalf("detached box is %s after shutdown", st)
	}
	if _, err := rt.Create(ctx, opts("late")); !errors.Is(err, core.ErrShutDown) {
		t.Fatalf("create after shutdown: %v", err)
	}
	if _, err := rt.Shutdown(ctx, time.Second); err != nil {
		t.Fatalf("second shutdown: %v", err)
	}
	_ = e.runtime().Stop(ctx, "detached", time.Second)
}

func TestShutdownReportsBoxesThatFailToStop(t *testing.T) {
	e := newEnv(t, "")
	ctx := context.Background()
	rt := e.runtime(core.WithLockTimeout(500 * time.Millisecond))
	b, err := rt.Create(ctx, opts("held"))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// Another process holds the box's lock (mid-operation) for longer than
	// we wait: shutdown cannot stop it and must say so.
	holder := holdLock(t, e.home+"/locks/"+b.ID()+".lock")
	res, err := rt.Shutdown(ctx, time.Second)
	if err == nil || res.Failed[b.ID()] == nil || !strings.Contains(res.Failed[b.ID()].Error(), "busy") {
		t.Fatalf("shutdown: %+v err=%v", res, err)
	}
	holder()
	_ = e.runtime().Stop(ctx, "held", time.Second)
}

func TestCloseStopsNonDetachedBoxes(t *testing.T) {
	e := newEnv(t, "")
	ctx := context.Background()
	rt := e.runtime()
	b, err := rt.Create(ctx, opts("tied"))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	vm := e.info(rt, "tied").Run.VM.PID
	if err := rt.Close(); err != nil {
		t.Fatal(err)
	}
	waitDead(t, vm, 5*time.Second)
	if st := e.info(e.runtime(), "tied").Status; st != model.StatusStopped {
		t.Fatalf("after Close: %s", st)
	}
}

// holdLock holds an exclusive flock on path from another process (as a
// boxctl mid-operation would) until the returned func is called.
func holdLock(t *testing.T, path string) func() {
	t.Helper()
	cmd := exec.Command("flock", "-o", path, "sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	release := func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() }
	t.Cleanup(release)
	// Wait until it holds the lock.
	for i := 0; i < 200 && exec.Command("flock", "-n", path, "true").Run() == nil; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	return release
}
