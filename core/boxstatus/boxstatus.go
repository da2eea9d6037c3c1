// Package boxstatus owns a box's lifecycle status: every change of it —
// by the runtime (package core), the per-box monitor, recovery, the CLI,
// the API server — is one of the transitions below, checked against the
// box's current status and run inside the caller's store transaction.
//
//	configured ──start──▶ starting ──ready──▶ running ◀──resume── paused
//	    ▲                    │ │                │  └──────pause──────▶ │
//	    └───start failed─────┘ │             stopping ◀────────────────┘
//	stopped ◀──start failed────┘                │
//	   ▲ ▲  └──────────start──────▶ starting     │
//	   │ └────────────exit (from any active status)
//	   └── cloned (configured: a clone gets its disk)
//	stopped ──suspended──▶ suspended ──start──▶ starting
//	suspended ──discarded──▶ stopped     (start failed ──▶ suspended)
//
// A transition names the run it belongs to: the monitor of an old run
// never changes a newer run's box (ErrSuperseded).
package boxstatus

import (
	"errors"
	"fmt"
	"time"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/state"
)

// ErrSuperseded: the transition belongs to a run the box no longer has.
var ErrSuperseded = errors.New("the box's run was superseded by a newer one")

// CounterBoxesStopped counts VM exits in the store; Exit adds to it.
const CounterBoxesStopped = "boxes_stopped"

// Start begins run: the box becomes Starting with it. The box must not be
// active. A suspended box starts too: it resumes from its saved state.
func Start(tx *state.Tx, id string, run *model.Run) (*model.Box, error) {
	return change(tx, id, "", []model.Status{model.StatusConfigured, model.StatusStopped, model.StatusSuspended}, func(b *model.Box) {
		b.Status = model.StatusStarting
		b.Run = run
		b.Error = ""
	})
}

// StartFailed records that run never got its VM running: the box goes back
// to Configured (Stopped once it has a disk; Suspended while it keeps a
// suspended state: a failed resume loses nothing), with why in Error.
func StartFailed(tx *state.Tx, id, runID string, why error) (*model.Box, error) {
	_, serr := tx.Checkpoint(id, model.SuspendCheckpoint)
	suspended := serr == nil
	return change(tx, id, runID, []model.Status{model.StatusStarting, model.StatusStopping, model.StatusStopped}, func(b *model.Box) {
		b.Status = model.StatusConfigured
		switch {
		case suspended:
			b.Status = model.StatusSuspended
		case b.DiskCreated:
			b.Status = model.StatusStopped
		}
		b.Error = "start failed: " + why.Error()
		if b.Run.Exit == nil {
			b.Run.Exit = &model.Exit{Code: -1, Reason: "start failed", At: time.Now().UTC()}
		}
	})
}

// Ready records that run's VM runs (its guest agent answers): the box
// becomes Running with the processes behind it.
func Ready(tx *state.Tx, id, runID string, update func(run *model.Run)) (*model.Box, error) {
	return change(tx, id, runID, []model.Status{model.StatusStarting}, func(b *model.Box) {
		b.Status = model.StatusRunning
		b.Error = ""
		update(b.Run)
	})
}

// Stopping records that a stop of run began.
func Stopping(tx *state.Tx, id, runID string) (*model.Box, error) {
	return change(tx, id, runID, []model.Status{model.StatusStarting, model.StatusRunning, model.StatusPaused, model.StatusStopping}, func(b *model.Box) {
		b.Status = model.StatusStopping
	})
}

// Exit records how run's VM ended: the box becomes Stopped. runID "" is an
// exit observed without the run's monitor (recovery, a vanished VM); then
// an exit already recorded is kept. Boxes that are not active are left
// alone.
func Exit(tx *state.Tx, id, runID string, exit *model.Exit) (*model.Box, error) {
	if b, err := tx.Box(id); err != nil || !b.Status.Active() {
		return b, err
	}
	b, err := change(tx, id, runID, []model.Status{model.StatusStarting, model.StatusRunning, model.StatusPaused, model.StatusStopping}, func(b *model.Box) {
		b.Status = model.StatusStopped
		if b.Run != nil && (runID != "" || b.Run.Exit == nil) {
			b.Run.Exit = exit
		}
		if b.Run != nil {
			b.Run.Pause = nil
		}
	})
	if err != nil {
		return b, err
	}
	return b, tx.AddCounter(CounterBoxesStopped, 1)
}

// Pause records that run's vCPUs are stopped and why.
func Pause(tx *state.Tx, id, runID string, p model.Pause) (*model.Box, error) {
	return change(tx, id, runID, []model.Status{model.StatusRunning, model.StatusPaused}, func(b *model.Box) {
		if b.Status == model.StatusPaused && b.Run.Pause != nil && b.Run.Pause.Cause == model.PauseIOError && p.Cause != model.PauseIOError {
			return // a disk error is the more useful reason to show
		}
		b.Status = model.StatusPaused
		b.Run.Pause = &p
	})
}

// Resume records that run's vCPUs run again.
func Resume(tx *state.Tx, id, runID string) (*model.Box, error) {
	return change(tx, id, runID, []model.Status{model.StatusPaused, model.StatusRunning}, func(b *model.Box) {
		b.Status = model.StatusRunning
		b.Run.Pause = nil
	})
}

// Cloned records that a new box got its disk from a clone: a Configured box
// becomes Stopped (it has a disk to start on).
func Cloned(tx *state.Tx, id string) (*model.Box, error) {
	return change(tx, id, "", []model.Status{model.StatusConfigured}, func(b *model.Box) {
		b.Status = model.StatusStopped
		b.DiskCreated = true
		b.Pending = ""
	})
}

// Suspended records that a stopped box's VM state was saved before its VM
// went: the next start resumes it. The state's record must exist.
func Suspended(tx *state.Tx, id string) (*model.Box, error) {
	if _, err := tx.Checkpoint(id, model.SuspendCheckpoint); err != nil {
		return nil, err
	}
	return change(tx, id, "", []model.Status{model.StatusStopped}, func(b *model.Box) {
		b.Status = model.StatusSuspended
	})
}

// Discarded records that a suspended box's saved state was dropped: it is
// Stopped, and boots afresh at the next start.
func Discarded(tx *state.Tx, id string) (*model.Box, error) {
	return change(tx, id, "", []model.Status{model.StatusSuspended}, func(b *model.Box) {
		b.Status = model.StatusStopped
	})
}

// Allowed reports whether a box in status from may move to to; the
// transitions above are the only ones that happen.
func Allowed(from, to model.Status) bool {
	for _, t := range transitions {
		if t.to == to {
			for _, f := range t.from {
				if f == from {
					return true
				}
			}
		}
	}
	return false
}

var transitions = []struct {
	from []model.Status
	to   model.Status
}{
	{[]model.Status{model.StatusConfigured, model.StatusStopped, model.StatusSuspended}, model.StatusStarting},
	{[]model.Status{model.StatusStarting, model.StatusStopping, model.StatusStopped}, model.StatusConfigured},
	{[]model.Status{model.StatusStopped, model.StatusStarting, model.StatusStopping}, model.StatusSuspended},
	{[]model.Status{model.StatusStarting}, model.StatusRunning},
	{[]model.Status{model.StatusPaused}, model.StatusRunning},
	{[]model.Status{model.StatusRunning}, model.StatusPaused},
	{[]model.Status{model.StatusStarting, model.StatusRunning, model.StatusPaused}, model.StatusStopping},
	{[]model.Status{model.StatusStarting, model.StatusRunning, model.StatusPaused, model.StatusStopping, model.StatusConfigured, model.StatusSuspended}, model.StatusStopped},
}

// change applies fn to the box if it belongs to runID ("" for any run) and
// its status is one of from. A transition from a status it already left is
// refused with model.ErrInvalidState, naming both.
func change(tx *state.Tx, id, runID string, from []model.Status, fn func(*model.Box)) (*model.Box, error) {
	b, err := tx.Box(id)
	if err != nil {
		return nil, err
	}
	if runID != "" && (b.Run == nil || b.Run.ID != runID) {
		return b, fmt.Errorf("box %s: run %s: %w", b.Name, runID, ErrSuperseded)
	}
	ok := false
	for _, s := range from {
		if b.Status == s {
			ok = true
			break
		}
	}
	if !ok {
		return b, fmt.Errorf("box %s is %s: %w", b.Name, b.Status, model.ErrInvalidState)
	}
	prev := b.Status
	fn(b)
	if b.Status != prev && !Allowed(prev, b.Status) {
		// A transition function broke the table: a bug, not a user error.
		return b, fmt.Errorf("box %s: %s -> %s is not a box transition", b.Name, prev, b.Status)
	}
	return b, tx.PutBox(b)
}
