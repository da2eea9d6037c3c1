package integration

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/guest/proto/agentv1"
	"github.com/boxctl/boxctl/test/testbin"
)

// writeVMState plays the hypervisor: it writes the VM state file the
// procvmm test double names in its launch plans.
func writeVMState(t *testing.T, b *model.Box, state, reason string) {
	t.Helper()
	if b.Run == nil || b.Run.StateFile == "" {
		t.Fatal("the box's run has no VM state file")
	}
	// The "VM" writes its own first state when it starts: let it, so it
	// does not overwrite the test's.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(b.Run.StateFile); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the VM never wrote its state file %s", b.Run.StateFile)
		}
		time.Sleep(20 * time.Millisecond)
	}
	data, _ := json.Marshal(map[string]string{"state": state, "reason": reason, "device": "vdb"})
	tmp := b.Run.StateFile + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, b.Run.StateFile); err != nil {
		t.Fatal(err)
	}
}

func TestVMPausedOnDiskErrorIsShownAndContinues(t *testing.T) {
	e := newEnv(t, "")
	b := startDetached(t, e, "full")
	writeVMState(t, b, "io-error", "no space left on device")
	p := e.waitStatus("full", model.StatusPaused, 10*time.Second)
	if !p.PausedByIOError() || p.Run.Pause.Reason != "no space left on device" || p.Run.Pause.Device != "vdb" {
		t.Fatalf("paused box records %+v", p.Run.Pause)
	}
	if out := e.ok("ls"); !strings.Contains(out, "Paused (disk full)") {
		t.Fatalf("ls does not say the disk is full:\n%s", out)
	}

	// Commands fail at once and say what to do.
	start := time.Now()
	_, errs, code := e.cli("exec", "full", "--", "true")
	if code != 125 || !strings.Contains(errs, "no space left on device") || !strings.Contains(errs, "boxctl unpause full") {
		t.Fatalf("exec into a box paused on a disk error: exit %d: %s", code, errs)
	}
	if d := time.Since(start); d > time.Minute {
		t.Fatalf("exec took %s to refuse", d)
	}

	// Unpausing while the disk is still full says so.
	if _, errs, code := e.cli("unpause", "full"); code != 125 || !strings.Contains(errs, "free space") {
		t.Fatalf("unpause with the disk still full: exit %d: %s", code, errs)
	}
	// Space freed: the hypervisor continues, and so does the box.
	writeVMState(t, b, "running", "")
	e.waitStatus("full", model.StatusRunning, 10*time.Second)
	e.ok("unpause", "full") // a no-op on a running box

	// A halted guest cannot shut down cleanly; stop must not wait for it.
	writeVMState(t, b, "io-error", "no space left on device")
	e.waitStatus("full", model.StatusPaused, 10*time.Second)
	start = time.Now()
	e.ok("stop", "-t", "30", "full")
	if d := time.Since(start); d > 25*time.Second {
		t.Fatalf("stop of a halted VM waited %s for a guest that cannot answer", d)
	}
	if s := e.info(e.runtime(), "full"); s.Status != model.StatusStopped {
		t.Fatalf("after stop: %s", s.Status)
	}
}

func TestStartContinuesABoxPausedOnDiskError(t *testing.T) {
	e := newEnv(t, "")
	b := startDetached(t, e, "cont")
	writeVMState(t, b, "io-error", "no space left on device")
	e.waitStatus("cont", model.StatusPaused, 10*time.Second)
	go func() {
		// The hypervisor continues once resumed and the disk has room.
		time.Sleep(200 * time.Millisecond)
		writeVMState(t, b, "running", "")
	}()
	e.ok("start", "cont")
	e.waitStatus("cont", model.StatusRunning, 10*time.Second)
	e.ok("stop", "cont")
}

// stallingAgentDouble is a TEST DOUBLE of the guest agent: its Exec never
// answers, as the agent of a guest whose vCPUs the hypervisor stopped (or
// a wedged guest) behaves. A real guest cannot be paused at exactly the
// moment a test needs without a full disk.
type stallingAgentDouble struct {
	agentv1.UnimplementedAgentServer
}

func (stallingAgentDouble) Exec(st grpc.BidiStreamingServer[agentv1.ExecRequest, agentv1.ExecResponse]) error {
	<-st.Context().Done()
	return st.Context().Err()
}

// stallingAgent serves the double on a socket and points the box at it.
func stallingAgent(t *testing.T, e *env, b *model.Box) {
	t.Helper()
	sock := filepath.Join(testbin.ShortTempDir(t), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	agentv1.RegisterAgentServer(srv, stallingAgentDouble{})
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	editRecord(t, e, b.ID, func(x *model.Box) { x.Run.AgentSocket = sock })
}

// execEnds runs an exec that the agent never answers and returns its error
// once something else ends it (the test fails if nothing does).
func execEnds(t *testing.T, rt *core.Runtime, ref string, opts core.ExecOptions, meanwhile func()) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := rt.Exec(context.Background(), ref, opts)
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	meanwhile()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("exec succeeded although the agent never answered")
		}
		return err
	case <-time.After(time.Minute):
		t.Fatal("exec still hangs a minute after its box went away")
		return nil
	}
}

func TestExecEndsWhenItsBoxIsRemoved(t *testing.T) {
	e := newEnv(t, "")
	b := startDetached(t, e, "gone")
	stallingAgent(t, e, b)
	err := execEnds(t, e.runtime(), "gone", core.ExecOptions{Argv: []string{"sleep", "600"}}, func() {
		e.ok("rm", "-f", "gone")
	})
	if !strings.Contains(err.Error(), "gone") || !(errors.Is(err, core.ErrNotFound) || errors.Is(err, core.ErrInvalidState)) {
		t.Fatalf("exec into a removed box: %v", err)
	}
}

func TestExecEndsWhenItsBoxIsStopped(t *testing.T) {
	e := newEnv(t, "")
	b := startDetached(t, e, "stopping")
	stallingAgent(t, e, b)
	err := execEnds(t, e.runtime(), "stopping", core.ExecOptions{Argv: []string{"sleep", "600"}}, func() {
		e.ok("stop", "-t", "1", "stopping")
	})
	if !errors.Is(err, core.ErrInvalidState) || !strings.Contains(err.Error(), "stopped") {
		t.Fatalf("exec into a stopped box: %v", err)
	}
}

func TestExecEndsWhenTheHypervisorPausesOnDiskError(t *testing.T) {
	e := newEnv(t, "")
	b := startDetached(t, e, "stalled")
	stallingAgent(t, e, b)
	err := execEnds(t, e.runtime(), "stalled", core.ExecOptions{Argv: []string{"dd", "if=/dev/zero", "of=/big"}}, func() {
		writeVMState(t, b, "io-error", "no space left on device")
	})
	if !strings.Contains(err.Error(), "no space left on device") || !strings.Contains(err.Error(), "boxctl unpause stalled") {
		t.Fatalf("exec in a box paused on a disk error: %v", err)
	}
}

func TestSignalToACommandInAPausedBoxEndsTheExec(t *testing.T) {
	e := newEnv(t, "")
	b := startDetached(t, e, "frozen")
	stallingAgent(t, e, b)
	rt := e.runtime()
	sigs := make(chan int, 1)
	err := execEnds(t, rt, "frozen", core.ExecOptions{Argv: []string{"sleep", "600"}, Signals: sigs}, func() {
		if err := rt.Pause(context.Background(), "frozen"); err != nil {
			t.Fatal(err)
		}
		sigs <- 15
	})
	if !strings.Contains(err.Error(), "signal 15 cannot reach the command") {
		t.Fatalf("signal while paused: %v", err)
	}
	if err := rt.Resume(context.Background(), "frozen"); err != nil {
		t.Fatal(err)
	}
}
