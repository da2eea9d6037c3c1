package monitor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/boxctl/boxctl/core/boxstatus"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/state"
)

// VM run states a VMM reports in its state file (LaunchPlan.state_file).
const (
	VMRunning  = "running"
	VMPaused   = "paused"
	VMIOError  = "io-error"
	VMShutdown = "shutdown"
)

// VMState is the content of a VM's state file.
type VMState struct {
	State  string    `json:"state"`
	Reason string    `json:"reason,omitempty"`
	Device string    `json:"device,omitempty"`
	At     time.Time `json:"at,omitempty"`
}

// ReadVMState reads a VM state file.
func ReadVMState(path string) (VMState, error) {
	var st VMState
	b, err := os.ReadFile(path)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("decode VM state file %s: %w", path, err)
	}
	return st, nil
}

// stateFilePoll is how often the monitor reads the VM's state file. A
// small read every quarter second costs nothing and bounds how long
// `boxctl ls` shows a VM the hypervisor paused as running.
const stateFilePoll = 250 * time.Millisecond

// watchVMState follows the VM's state file until the VM exits and records
// what it says in the box: a VM the hypervisor paused because a disk
// request failed becomes Paused with the reason, and Running again once it
// continues.
func (m *monitor) watchVMState(ctx context.Context) {
	path := m.o.Launch.StateFile
	t := time.NewTicker(stateFilePoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.exited:
			return
		case <-t.C:
		}
		// Read it every time rather than trusting its mtime: VMMs update
		// the file in place (no new file can be made on a full disk), and
		// a read racing a write sees the new mtime with the old content.
		st, err := ReadVMState(path)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				m.log.Debug("read VM state file", "error", err)
			}
			continue
		}
		m.applyVMState(ctx, st)
	}
}

func (m *monitor) applyVMState(ctx context.Context, st VMState) {
	m.mu.Lock()
	changed := m.vmState.State != st.State || m.vmState.Reason != st.Reason
	m.vmState = st
	// A quiesce bracket's own pause is not the box's: it ends with the
	// bracket (the VM state file may say so a poll late).
	bracket := st.State == VMPaused && (m.holds > 0 || !st.At.IsZero() && !st.At.After(m.holdEnded))
	m.mu.Unlock()
	if !changed || bracket {
		return
	}
	switch st.State {
	case VMIOError:
		m.log.Warn("the hypervisor paused the VM after a disk error", "reason", st.Reason, "device", st.Device)
	default:
		m.log.Debug("vm state", "state", st.State)
	}
	at := st.At
	if at.IsZero() {
		at = time.Now().UTC()
	}
	id, runID := m.o.Launch.BoxID, m.o.Launch.RunID
	err := m.transition(ctx, func(tx *state.Tx) (*model.Box, error) {
		switch st.State {
		case VMIOError:
			return boxstatus.Pause(tx, id, runID, model.Pause{Cause: model.PauseIOError, Reason: st.Reason, Device: st.Device, At: at})
		case VMPaused:
			return boxstatus.Pause(tx, id, runID, model.Pause{Cause: model.PauseRequested, At: at})
		case VMRunning:
			b, err := tx.Box(id)
			if err != nil || b.Status != model.StatusPaused {
				return b, err // running already (or starting, stopping)
			}
			return boxstatus.Resume(tx, id, runID)
		}
		return nil, nil
	})
	if errors.Is(err, model.ErrInvalidState) || errors.Is(err, boxstatus.ErrSuperseded) {
		err = nil // starting, stopping or gone: the exit or the start records the rest
	}
	if err != nil {
		// Try again on the next read (the store may be on the disk that
		// just filled up).
		m.log.Warn("record vm state", "state", st.State, "error", err)
		m.mu.Lock()
		m.vmState = VMState{}
		m.mu.Unlock()
	}
}

// vmHalted reports whether the VM's vCPUs are stopped (paused by request or
// by the hypervisor after a disk error): the guest agent cannot answer.
func (m *monitor) vmHalted() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.vmState.State == VMPaused || m.vmState.State == VMIOError
}
