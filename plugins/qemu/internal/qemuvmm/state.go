package qemuvmm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/boxctl/boxctl/plugins/qemu/internal/qmp"
)

// VM run states in the state file (LaunchPlan.state_file).
const (
	stateRunning  = "running"
	statePaused   = "paused"
	stateIOError  = "io-error"
	stateShutdown = "shutdown"
)

// vmState is the state file's JSON object.
type vmState struct {
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
	Device string `json:"device,omitempty"`
	At     string `json:"at"`
}

// stateWriter keeps the state file current. Only the events goroutine
// writes, until exited.
//
// The file matters most when the host filesystem is full (QEMU stops the
// guest on a failed disk write): then no new file can be created, so the
// file is made once, at a fixed size, while there is room, and every
// update overwrites it in place. Readers parse the JSON and ignore the
// space padding.
type stateWriter struct {
	path string
	log  *slog.Logger
	cur  vmState
	f    *os.File
}

// stateFileSize is the state file's fixed size; a state is far smaller.
const stateFileSize = 512

func newStateWriter(path string, log *slog.Logger) *stateWriter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &stateWriter{path: path, log: log}
	if path == "" {
		return w
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, 0o644)
	if err != nil {
		log.Warn("create the VM state file", "file", path, "err", err)
		return w
	}
	if err := f.Truncate(stateFileSize); err != nil {
		log.Warn("size the VM state file", "file", path, "err", err)
	}
	w.f = f
	return w
}

// set records a state; an unchanged one is not rewritten.
func (w *stateWriter) set(state, reason, device string) {
	if w.f == nil || (w.cur.State == state && w.cur.Reason == reason && w.cur.Device == device) {
		return
	}
	w.cur = vmState{State: state, Reason: reason, Device: device, At: time.Now().UTC().Format(time.RFC3339Nano)}
	b, _ := json.Marshal(w.cur)
	if len(b) >= stateFileSize {
		b, _ = json.Marshal(vmState{State: state, Device: device, At: w.cur.At})
	}
	buf := bytes.Repeat([]byte(" "), stateFileSize)
	copy(buf, b)
	buf[stateFileSize-1] = '\n'
	if _, err := w.f.WriteAt(buf, 0); err != nil {
		w.log.Warn("write the VM state file", "file", w.path, "err", err)
	}
}

// exited records that QEMU is gone and closes the file.
func (w *stateWriter) exited() {
	if w.cur.State != stateShutdown {
		w.set(stateShutdown, "qemu exited", "")
	}
	if w.f != nil {
		w.f.Close()
		w.f = nil
	}
}

// watchEvents follows QEMU's run state on the launcher's own QMP
// connection until QEMU closes it or ctx ends.
func watchEvents(ctx context.Context, c net.Conn, w *stateWriter, log *slog.Logger) {
	if c == nil {
		return
	}
	defer c.Close()
	hctx, cancel := context.WithTimeout(ctx, time.Minute)
	q, err := qmp.NewConn(hctx, c)
	cancel()
	if err != nil {
		log.Warn("QMP events: no connection; the VM state file is not kept", "err", err)
		return
	}
	refresh := func() {
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		raw, err := q.Execute(qctx, "query-status", nil)
		if err != nil {
			log.Debug("QMP query-status", "err", err)
			return
		}
		var st struct {
			Status string `json:"status"`
		}
		_ = json.Unmarshal(raw, &st)
		state, reason := mapStatus(st.Status)
		if state == stateIOError && w.cur.State == stateIOError {
			return // keep what BLOCK_IO_ERROR said
		}
		w.set(state, reason, "")
	}
	refresh()
	for {
		ev, err := q.Next(ctx)
		if err != nil {
			if !errors.Is(err, qmp.ErrClosed) && ctx.Err() == nil {
				log.Debug("QMP events", "err", err)
			}
			return
		}
		log.Debug("QMP event", "event", ev.Name, "data", string(ev.Data))
		switch ev.Name {
		case "BLOCK_IO_ERROR":
			var d struct {
				Device   string `json:"device"`
				NodeName string `json:"node-name"`
				Action   string `json:"action"`
				NoSpace  bool   `json:"nospace"`
				Reason   string `json:"reason"`
			}
			_ = json.Unmarshal(ev.Data, &d)
			if d.Action != "stop" {
				continue // reported to the guest, which carries on
			}
			reason := strings.ToLower(d.Reason)
			if d.NoSpace && reason == "" {
				reason = "no space left on device"
			}
			w.set(stateIOError, reason, guestDevice(d.NodeName, d.Device))
		case "STOP":
			if w.cur.State != stateIOError {
				refresh()
			}
		case "RESUME":
			w.set(stateRunning, "", "")
		case "SHUTDOWN":
			var d struct {
				Reason string `json:"reason"`
			}
			_ = json.Unmarshal(ev.Data, &d)
			w.set(stateShutdown, d.Reason, "")
		}
	}
}

// mapStatus turns QEMU's run status into a state file state and reason.
func mapStatus(status string) (state, reason string) {
	switch status {
	case "running":
		return stateRunning, ""
	case "io-error":
		return stateIOError, "a disk request failed"
	case "shutdown":
		return stateShutdown, ""
	case "paused":
		return statePaused, ""
	}
	return statePaused, status
}

// guestDevice names the guest disk of a block node: the plan names each
// disk's top node after its guest device (vda, vdb) and the nodes below it
// vdb-f, vdb-b1, ...
func guestDevice(node, device string) string {
	if node == "" {
		return device
	}
	dev, _, _ := strings.Cut(node, "-")
	return dev
}
