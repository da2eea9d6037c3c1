package boxstatus

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/state"
)

func newStore(t *testing.T) *state.Store {
	t.Helper()
	st, err := state.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func do(t *testing.T, st *state.Store, fn func(tx *state.Tx) (*model.Box, error)) (*model.Box, error) {
	t.Helper()
	var b *model.Box
	err := st.Update(context.Background(), func(tx *state.Tx) error {
		var err error
		b, err = fn(tx)
		return err
	})
	return b, err
}

func TestALifeOfTransitions(t *testing.T) {
	st := newStore(t)
	if _, err := do(t, st, func(tx *state.Tx) (*model.Box, error) {
		b := &model.Box{ID: "b1", Name: "one", Status: model.StatusConfigured}
		return b, tx.PutBox(b)
	}); err != nil {
		t.Fatal(err)
	}
	step := func(name string, want model.Status, fn func(tx *state.Tx) (*model.Box, error)) *model.Box {
		t.Helper()
		b, err := do(t, st, fn)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if b.Status != want {
			t.Fatalf("%s: status %s, want %s", name, b.Status, want)
		}
		return b
	}
	run := &model.Run{ID: "r1"}
	step("start", model.StatusStarting, func(tx *state.Tx) (*model.Box, error) { return Start(tx, "b1", run) })
	b := step("ready", model.StatusRunning, func(tx *state.Tx) (*model.Box, error) {
		return Ready(tx, "b1", "r1", func(r *model.Run) { r.ConsoleLog = "/c" })
	})
	if b.Run.ConsoleLog != "/c" {
		t.Fatal("Ready did not update the run")
	}
	step("disk error", model.StatusPaused, func(tx *state.Tx) (*model.Box, error) {
		return Pause(tx, "b1", "r1", model.Pause{Cause: model.PauseIOError, Reason: "no space"})
	})
	// A requested pause does not hide the disk error.
	b = step("pause again", model.StatusPaused, func(tx *state.Tx) (*model.Box, error) {
		return Pause(tx, "b1", "r1", model.Pause{Cause: model.PauseRequested})
	})
	if !b.PausedByIOError() {
		t.Fatal("the disk error was overwritten by a requested pause")
	}
	step("resume", model.StatusRunning, func(tx *state.Tx) (*model.Box, error) { return Resume(tx, "b1", "r1") })
	step("stopping", model.StatusStopping, func(tx *state.Tx) (*model.Box, error) { return Stopping(tx, "b1", "r1") })
	b = step("exit", model.StatusStopped, func(tx *state.Tx) (*model.Box, error) {
		return Exit(tx, "b1", "r1", &model.Exit{Code: 0, Reason: "stopped", At: time.Now()})
	})
	if b.Run.Exit == nil || b.Run.Exit.Reason != "stopped" || b.Run.Pause != nil {
		t.Fatalf("exit recorded as %+v, pause %+v", b.Run.Exit, b.Run.Pause)
	}
	// A second exit observed without the monitor keeps the first.
	b = step("exit again", model.StatusStopped, func(tx *state.Tx) (*model.Box, error) {
		return Exit(tx, "b1", "", &model.Exit{Code: -1, Reason: "vanished"})
	})
	if b.Run.Exit.Reason != "stopped" {
		t.Fatalf("a later exit replaced the recorded one: %+v", b.Run.Exit)
	}
	// A start that fails on a box with a disk leaves it stopped.
	step("start again", model.StatusStarting, func(tx *state.Tx) (*model.Box, error) { return Start(tx, "b1", &model.Run{ID: "r2"}) })
	if _, err := do(t, st, func(tx *state.Tx) (*model.Box, error) {
		b, _ := tx.Box("b1")
		b.DiskCreated = true
		return b, tx.PutBox(b)
	}); err != nil {
		t.Fatal(err)
	}
	b = step("start failed", model.StatusStopped, func(tx *state.Tx) (*model.Box, error) {
		return StartFailed(tx, "b1", "r2", errors.New("no kernel"))
	})
	if b.Error != "start failed: no kernel" {
		t.Fatalf("error %q", b.Error)
	}
	var c map[string]uint64
	_ = st.View(context.Background(), func(tx *state.Tx) error { c = tx.Counters(); return nil })
	if c[CounterBoxesStopped] != 1 {
		t.Fatalf("boxes stopped counted %d times, want 1", c[CounterBoxesStopped])
	}
}

func TestRefusedTransitions(t *testing.T) {
	st := newStore(t)
	_, _ = do(t, st, func(tx *state.Tx) (*model.Box, error) {
		b := &model.Box{ID: "b1", Name: "one", Status: model.StatusRunning, Run: &model.Run{ID: "new"}}
		return b, tx.PutBox(b)
	})
	// The monitor of an old run cannot touch the newer run.
	if _, err := do(t, st, func(tx *state.Tx) (*model.Box, error) {
		return Exit(tx, "b1", "old", &model.Exit{})
	}); !errors.Is(err, ErrSuperseded) {
		t.Fatalf("exit of an old run: %v", err)
	}
	// Starting an active box, or readying one that is not starting, is refused.
	if _, err := do(t, st, func(tx *state.Tx) (*model.Box, error) { return Start(tx, "b1", &model.Run{ID: "x"}) }); !errors.Is(err, model.ErrInvalidState) {
		t.Fatalf("start of a running box: %v", err)
	}
	if _, err := do(t, st, func(tx *state.Tx) (*model.Box, error) { return Ready(tx, "b1", "new", func(*model.Run) {}) }); !errors.Is(err, model.ErrInvalidState) {
		t.Fatalf("ready of a running box: %v", err)
	}
	if _, err := do(t, st, func(tx *state.Tx) (*model.Box, error) { return Cloned(tx, "b1") }); !errors.Is(err, model.ErrInvalidState) {
		t.Fatalf("cloned on a running box: %v", err)
	}
	for _, bad := range [][2]model.Status{
		{model.StatusConfigured, model.StatusRunning},
		{model.StatusStopped, model.StatusPaused},
		{model.StatusConfigured, model.StatusPaused},
		{model.StatusStopping, model.StatusRunning},
	} {
		if Allowed(bad[0], bad[1]) {
			t.Errorf("%s -> %s is allowed", bad[0], bad[1])
		}
	}
}

// TestSuspendTransitions: a stopped box with a recorded saved state becomes
// Suspended (not without one); it starts again, and a failed resume leaves
// it Suspended; Discarded makes it Stopped.
func TestSuspendTransitions(t *testing.T) {
	st := newStore(t)
	if _, err := do(t, st, func(tx *state.Tx) (*model.Box, error) {
		b := &model.Box{ID: "s1", Name: "sus", Status: model.StatusStopped, DiskCreated: true, Run: &model.Run{ID: "r0"}}
		return b, tx.PutBox(b)
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := do(t, st, func(tx *state.Tx) (*model.Box, error) { return Suspended(tx, "s1") }); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("Suspended without a saved state: %v, want not found", err)
	}
	if _, err := do(t, st, func(tx *state.Tx) (*model.Box, error) {
		return nil, tx.PutCheckpoint(model.Checkpoint{BoxID: "s1", Name: model.SuspendCheckpoint})
	}); err != nil {
		t.Fatal(err)
	}
	b, err := do(t, st, func(tx *state.Tx) (*model.Box, error) { return Suspended(tx, "s1") })
	if err != nil || b.Status != model.StatusSuspended {
		t.Fatalf("Suspended: %v, status %v", err, b)
	}
	if _, err := do(t, st, func(tx *state.Tx) (*model.Box, error) { return Start(tx, "s1", &model.Run{ID: "r1"}) }); err != nil {
		t.Fatal(err)
	}
	b, err = do(t, st, func(tx *state.Tx) (*model.Box, error) { return StartFailed(tx, "s1", "r1", errors.New("corrupt")) })
	if err != nil || b.Status != model.StatusSuspended {
		t.Fatalf("a failed resume: %v, status %s, want suspended (nothing lost)", err, b.Status)
	}
	b, err = do(t, st, func(tx *state.Tx) (*model.Box, error) { return Discarded(tx, "s1") })
	if err != nil || b.Status != model.StatusStopped {
		t.Fatalf("Discarded: %v, status %s", err, b.Status)
	}
	if _, err := do(t, st, func(tx *state.Tx) (*model.Box, error) { return Discarded(tx, "s1") }); !errors.Is(err, model.ErrInvalidState) {
		t.Fatalf("Discarded of a stopped box: %v", err)
	}
}
