package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/state"
)

// startDetached creates and starts a detached box and returns its record.
func startDetached(t *testing.T, e *env, name string) *model.Box {
	t.Helper()
	e.ok("create", "--name", name, testImage)
	e.ok("start", name)
	b := e.info(e.runtime(), name)
	if b.Status != model.StatusRunning {
		t.Fatalf("%s is %s after start", name, b.Status)
	}
	return b
}

func kill9(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %d: %v", pid, err)
	}
	waitDead(t, pid, 5*time.Second)
}

// editRecord changes a box record behind the runtime's back, as a crash or
// a reboot would leave it.
func editRecord(t *testing.T, e *env, id string, fn func(b *model.Box)) {
	t.Helper()
	st, err := state.Open(context.Background(), e.home)
	if err != nil {
		t.Fatal(err)
	}
	err = st.Update(context.Background(), func(tx *state.Tx) error {
		b, err := tx.Box(id)
		if err != nil {
			return err
		}
		fn(b)
		return tx.PutBox(b)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestKillVMLeavesBoxStoppedWithExitRecorded(t *testing.T) {
	e := newEnv(t, "")
	b := startDetached(t, e, "victim")
	kill9(t, b.Run.VM.PID)
	s := e.waitStatus("victim", model.StatusStopped, 10*time.Second)
	if s.Run.Exit == nil || s.Run.Exit.Signal != 9 || s.Run.Exit.Code != 137 {
		t.Fatalf("exit %+v, want signal 9 / code 137", s.Run.Exit)
	}
	waitDead(t, b.Run.Monitor.PID, 5*time.Second)
	if _, err := os.Stat(filepath.Join(e.boxDir(b.ID), "vm.pid")); !os.IsNotExist(err) {
		t.Fatal("pid file left behind")
	}
	// It starts again.
	e.ok("start", "victim")
	if r := e.info(e.runtime(), "victim"); r.Status != model.StatusRunning {
		t.Fatalf("restart: %s", r.Status)
	}
	e.ok("stop", "-t", "5", "victim")
}

func TestKillMonitorThenVMIsRecoveredOnNextCommand(t *testing.T) {
	e := newEnv(t, "")
	b := startDetached(t, e, "orphan")
	kill9(t, b.Run.Monitor.PID)
	kill9(t, b.Run.VM.PID)
	// The record still says running; the next command finds out.
	out := e.ok("ls", "-a", "--format", "{{.Name}} {{.Status}}")
	if !strings.Contains(out, "orphan stopped") {
		t.Fatalf("ls after kills: %q", out)
	}
	s := e.info(e.runtime(), "orphan")
	if s.Run.Exit == nil || s.Run.Exit.Reason != "vm process vanished" {
		t.Fatalf("exit %+v", s.Run.Exit)
	}
	if _, err := os.Stat(filepath.Join(e.boxDir(b.ID), "vm.pid")); !os.IsNotExist(err) {
		t.Fatal("stale pid file not cleaned")
	}
	e.ok("start", "orphan")
	e.ok("stop", "orphan")
}

func TestStopThroughVMMPluginWhenMonitorIsGone(t *testing.T) {
	e := newEnv(t, "")
	b := startDetached(t, e, "headless")
	kill9(t, b.Run.Monitor.PID)
	if !pidAlive(b.Run.VM.PID) {
		t.Fatal("the VM died with its monitor; VMs must outlive their monitor")
	}
	e.ok("stop", "-t", "5", "headless")
	waitDead(t, b.Run.VM.PID, 5*time.Second)
	s := e.info(e.runtime(), "headless")
	if s.Status != model.StatusStopped || !strings.Contains(s.Run.Exit.Reason, "monitor was gone") {
		t.Fatalf("after stop: %s %+v", s.Status, s.Run.Exit)
	}
}

func TestPIDReusedByUnrelatedProcess(t *testing.T) {
	e := newEnv(t, "")
	b := startDetached(t, e, "reused")
	kill9(t, b.Run.Monitor.PID)
	kill9(t, b.Run.VM.PID)
	// An unrelated live process now holds "the VM's" PID (we point the
	// record and PID file at it, as PID reuse would).
	other := exec.Command("sleep", "30")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = other.Process.Kill(); _ = other.Wait() }()
	editRecord(t, e, b.ID, func(x *model.Box) { x.Run.VM.PID = other.Process.Pid })
	pidFile := filepath.Join(e.boxDir(b.ID), "vm.pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(other.Process.Pid)+" 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := e.info(e.runtime(), "reused")
	if s.Status != model.StatusStopped {
		t.Fatalf("box whose PID belongs to another process is %s; PID reuse went unnoticed", s.Status)
	}
	if !pidAlive(other.Process.Pid) {
		t.Fatal("recovery killed an unrelated process")
	}
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Fatal("stale pid file not cleaned")
	}
	// Stop must not touch the unrelated process either.
	e.ok("stop", "reused")
	if !pidAlive(other.Process.Pid) {
		t.Fatal("stop killed an unrelated process")
	}
}

func TestHostRebootMarksActiveBoxesStopped(t *testing.T) {
	e := newEnv(t, "")
	b := startDetached(t, e, "rebooted")
	kill9(t, b.Run.Monitor.PID)
	kill9(t, b.Run.VM.PID)
	editRecord(t, e, b.ID, func(x *model.Box) {
		x.Run.VM.BootID = "11111111-2222-3333-4444-555555555555"
		x.Run.Monitor.BootID = x.Run.VM.BootID
	})
	s := e.info(e.runtime(), "rebooted")
	if s.Status != model.StatusStopped || s.Run.Exit.Reason != "host rebooted" {
		t.Fatalf("after reboot: %s %+v", s.Status, s.Run.Exit)
	}
}

func TestOrphanDirectoryIsRemoved(t *testing.T) {
	e := newEnv(t, "")
	e.ok("ls") // creates the home
	orphan := e.boxDir("0123456789abcdef0123456789abcdef")
	if err := os.MkdirAll(orphan, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(orphan, "junk"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.ok("ls")
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Fatal("box directory without a record survived recovery")
	}
	e.assertConsistent(e.runtime())
}

func TestActiveBoxWhoseDirectoryVanishedIsRemoved(t *testing.T) {
	e := newEnv(t, "")
	b := startDetached(t, e, "homeless")
	kill9(t, b.Run.Monitor.PID)
	if err := os.RemoveAll(e.boxDir(b.ID)); err != nil {
		t.Fatal(err)
	}
	rt := e.runtime()
	if ok, _ := rt.Exists(context.Background(), "homeless"); ok {
		t.Fatal("active box whose directory vanished still exists")
	}
	waitDead(t, b.Run.VM.PID, 10*time.Second)
	e.assertConsistent(rt)
}

func TestAutoRemoveBoxes(t *testing.T) {
	e := newEnv(t, "plugin \"procvmm\" {\n  config {\n    exit_after = \"1s\"\n  }\n}\n")
	// The VM exits by itself: its monitor removes the box.
	e.ok("create", "--rm", "--name", "ephemeral", testImage)
	e.ok("start", "ephemeral")
	deadline := time.Now().Add(15 * time.Second)
	for {
		rt := e.runtime()
		ok, _ := rt.Exists(context.Background(), "ephemeral")
		_ = rt.Close()
		if !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("auto-remove box not removed after its VM exited")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Monitor and VM killed: the next runtime removes it.
	e2 := newEnv(t, "")
	b := startDetached(t, e2, "ephemeral2")
	editRecord(t, e2, b.ID, func(x *model.Box) { x.Config.AutoRemove = true })
	kill9(t, b.Run.Monitor.PID)
	kill9(t, b.Run.VM.PID)
	rt := e2.runtime()
	if ok, _ := rt.Exists(context.Background(), "ephemeral2"); ok {
		t.Fatal("stopped auto-remove box survived recovery")
	}
	e2.assertConsistent(rt)
	// Stop removes an auto-remove box.
	e2.ok("create", "--rm", "--name", "ephemeral3", testImage)
	e2.ok("start", "ephemeral3")
	e2.ok("stop", "ephemeral3")
	if ok, _ := e2.runtime().Exists(context.Background(), "ephemeral3"); ok {
		t.Fatal("auto-remove box survived stop")
	}
}

func TestInterruptedRemovalIsFinished(t *testing.T) {
	e := newEnv(t, "")
	id := strings.TrimSpace(e.ok("create", "--name", "half", testImage))
	editRecord(t, e, id, func(x *model.Box) { x.Pending = "removing" })
	rt := e.runtime()
	if ok, _ := rt.Exists(context.Background(), "half"); ok {
		t.Fatal("box with an interrupted removal survived recovery")
	}
	if _, err := os.Stat(e.boxDir(id)); !os.IsNotExist(err) {
		t.Fatal("directory of removed box survived")
	}
	e.assertConsistent(rt)
}

func TestInterruptedCreateLeavesNothing(t *testing.T) {
	e := newEnv(t, "")
	e.ok("ls")
	// A create that died before its transaction committed leaves a
	// directory and a lock file without a record.
	id := "feedfacefeedfacefeedfacefeedface"
	if err := os.MkdirAll(e.boxDir(id), 0o700); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(e.home, "locks", id+".lock")
	if err := os.WriteFile(stale, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	e.ok("ls")
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatal("lock file of a missing box survived recovery")
	}
	if _, err := os.Stat(e.boxDir(id)); !os.IsNotExist(err) {
		t.Fatal("directory of a missing box survived recovery")
	}
	e.assertConsistent(e.runtime())
}

func TestRecoveryLeavesBusyBoxesAlone(t *testing.T) {
	e := newEnv(t, "")
	b := startDetached(t, e, "busy")
	kill9(t, b.Run.Monitor.PID)
	kill9(t, b.Run.VM.PID)
	release := holdLock(t, filepath.Join(e.home, "locks", b.ID+".lock"))
	if st := e.info(e.runtime(), "busy").Status; st != model.StatusRunning {
		t.Fatalf("recovery changed a box another process holds: %s", st)
	}
	release()
	if st := e.info(e.runtime(), "busy").Status; st != model.StatusStopped {
		t.Fatalf("after release: %s", st)
	}
}

func TestListShowsABoxWhoseMonitorIsGone(t *testing.T) {
	e := newEnv(t, "")
	b := startDetached(t, e, "unsupervised")
	kill9(t, b.Run.Monitor.PID)
	if out := e.ok("ls"); !strings.Contains(out, "(monitor gone)") {
		t.Fatalf("ls does not say the box has lost its monitor:\n%s", out)
	}
	e.ok("stop", "-t", "5", "unsupervised")
	waitDead(t, b.Run.VM.PID, 5*time.Second)
}

func TestUnsafeHomeIsRefused(t *testing.T) {
	for name, spoil := range map[string]func(home string) error{
		"world-writable home": func(home string) error { return os.Chmod(home, 0o777) },
		"group-writable boxes dir": func(home string) error {
			return os.Chmod(filepath.Join(home, "boxes"), 0o770)
		},
		"state file owned by another user": func(home string) error {
			return os.Chown(filepath.Join(home, "state.db"), 4242, 4242)
		},
	} {
		t.Run(name, func(t *testing.T) {
			if name == "state file owned by another user" && os.Geteuid() != 0 {
				t.Skip("needs root to give a file to another user")
			}
			e := newEnv(t, "")
			e.ok("ls") // makes the home
			if err := spoil(e.home); err != nil {
				t.Fatal(err)
			}
			_, errs, code := e.cli("ls")
			if code != 125 || !strings.Contains(errs, "unsafe home") || !(strings.Contains(errs, "chmod go-w") || strings.Contains(errs, "chown")) {
				t.Fatalf("boxctl ls on an unsafe home: exit %d: %s", code, errs)
			}
		})
	}
}
