package monitor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/boxctl/boxctl/core/boxstatus"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/state"
	"github.com/boxctl/boxctl/internal/proc"
	"github.com/boxctl/boxctl/sdk"
)

// VMM is what the monitor needs from the box's VMM plugin: stop the VM, and
// continue a paused one so that it can shut down cleanly.
type VMM interface {
	Stop(ctx context.Context, vm sdk.VM, force bool) error
	Resume(ctx context.Context, vm sdk.VM) error
}

// Agent is what the monitor needs from the guest agent: to know when the
// guest is ready, to ask it to power off cleanly, and to thaw it.
type Agent interface {
	// WaitReady waits until the guest agent answers with the box root
	// mounted; with id, it then gives a guest restored from a saved state
	// its identity (on the same connection), before the box counts as
	// running.
	WaitReady(ctx context.Context, socket string, id *Identity) error
	Shutdown(ctx context.Context, socket string) error
	// Thaw undoes a freeze left by a quiesce bracket whose holder died.
	Thaw(ctx context.Context, socket string) error
}

// Options are the monitor's inputs.
type Options struct {
	Store   *state.Store
	Launch  *Launch
	PIDFile string
	Socket  string
	// VMLog receives the VM process's stdout and stderr.
	VMLog string
	// Ready receives one JSON Ready line, then is closed.
	Ready  io.WriteCloser
	Logger hclog.Logger
	// VMM returns the box's VMM plugin (started lazily: only a stop needs it).
	VMM func(ctx context.Context) (VMM, error)
	// Agent is nil when the VM has no guest agent.
	Agent Agent
	// OnExit runs after the exit is recorded, with the final record (for
	// auto-removal).
	OnExit func(ctx context.Context, box *model.Box)
	// Probe runs a health check command in the guest; nil disables
	// health checks.
	Probe func(ctx context.Context, socket string, argv []string, timeout time.Duration) (healthy bool, output string)
}

type monitor struct {
	o     Options
	log   hclog.Logger
	cmd   *exec.Cmd
	vm    proc.Ident
	self  proc.Ident
	start time.Time

	exited chan struct{}
	// recorded is closed once the exit is persisted.
	recorded chan struct{}
	exit     *model.Exit

	stopOnce   sync.Once
	stopReason string
	mu         sync.Mutex
	// vmState is the last state read from the VM's state file.
	vmState VMState
	// holds counts the quiesce brackets being guarded; holdEnded is when
	// the last one ended. The VM pauses they cause are not recorded.
	holds     int
	holdEnded time.Time
	// handlers counts control connections being answered; the monitor
	// exits only after they got their reply.
	handlers sync.WaitGroup
}

// Run supervises one VM until it exits. It returns after the exit is
// recorded. Cancelling ctx (the monitor got SIGTERM) stops the VM.
func Run(ctx context.Context, o Options) error {
	m := &monitor{o: o, log: o.Logger, exited: make(chan struct{}), recorded: make(chan struct{})}
	if m.log == nil {
		m.log = hclog.NewNullLogger()
	}
	self, err := proc.Self()
	if err != nil {
		return m.fail(ctx, err)
	}
	m.self = self
	if err := m.checkRecord(ctx); err != nil {
		return m.fail(ctx, err)
	}
	ln, err := m.listen()
	if err != nil {
		return m.fail(ctx, err)
	}
	defer func() {
		_ = ln.Close()
		_ = os.Remove(o.Socket)
	}()
	if err := m.startVM(); err != nil {
		return m.fail(ctx, fmt.Errorf("start VM process %s: %w", o.Launch.Argv[0], err))
	}
	go m.serve(ln)

	if o.Agent != nil && o.Launch.AgentSocket != "" {
		if err := m.waitAgent(ctx); err != nil {
			m.requestStop(0, "agent never became ready")
			<-m.recorded
			return m.fail(ctx, err)
		}
	}
	if err := m.markRunning(ctx); err != nil {
		m.requestStop(0, "could not record running state")
		<-m.recorded
		return m.fail(ctx, err)
	}
	m.ready(Ready{OK: true, VMPID: m.vm.PID})
	TrimResidentText()

	if !o.Launch.Detached {
		go m.watchOwner(ctx)
	}
	if o.Launch.StateFile != "" {
		go m.watchVMState(ctx)
	}
	if o.Launch.Health != nil && o.Probe != nil && o.Launch.AgentSocket != "" {
		hctx, stopHealth := context.WithCancel(ctx)
		defer stopHealth()
		go m.checkHealth(hctx)
	}
	select {
	case <-m.recorded:
	case <-ctx.Done():
		m.requestStop(o.Launch.StopTimeout, "monitor was asked to stop")
		<-m.recorded
	}
	m.drainHandlers(5 * time.Second)
	return nil
}

// drainHandlers waits (bounded) for control connections to be answered,
// so a stop request always gets its reply before the monitor exits.
func (m *monitor) drainHandlers(limit time.Duration) {
	done := make(chan struct{})
	go func() {
		m.handlers.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(limit):
	}
}

// ready writes r to the ready pipe and closes it; it reports whether the
// starter got the line.
func (m *monitor) ready(r Ready) bool {
	if m.o.Ready == nil {
		return false
	}
	err := json.NewEncoder(m.o.Ready).Encode(r)
	_ = m.o.Ready.Close()
	m.o.Ready = nil
	return err == nil
}

// fail reports a start failure. The starter waiting on the ready pipe
// records it in the box; only when nobody is waiting (the starter died)
// does the monitor record it itself.
func (m *monitor) fail(ctx context.Context, err error) error {
	m.log.Error("monitor failed", "error", err)
	if m.ready(Ready{Error: err.Error()}) {
		return err
	}
	_ = m.transition(ctx, func(tx *state.Tx) (*model.Box, error) {
		return boxstatus.StartFailed(tx, m.o.Launch.BoxID, m.o.Launch.RunID, err)
	})
	return err
}

// transition applies a status transition of this run (package boxstatus)
// in one store transaction.
func (m *monitor) transition(ctx context.Context, t func(tx *state.Tx) (*model.Box, error)) error {
	return m.o.Store.Update(ctx, func(tx *state.Tx) error {
		_, err := t(tx)
		return err
	})
}

// update changes the box record if it still belongs to this run; an older
// monitor never overwrites a newer run.
func (m *monitor) update(ctx context.Context, fn func(b *model.Box)) error {
	return m.o.Store.Update(ctx, func(tx *state.Tx) error {
		b, err := tx.Box(m.o.Launch.BoxID)
		if err != nil {
			return err
		}
		if b.Run == nil || b.Run.ID != m.o.Launch.RunID {
			return fmt.Errorf("box %s: run %s was superseded", b.ID, m.o.Launch.RunID)
		}
		fn(b)
		return tx.PutBox(b)
	})
}

func (m *monitor) checkRecord(ctx context.Context) error {
	return m.o.Store.View(ctx, func(tx *state.Tx) error {
		b, err := tx.Box(m.o.Launch.BoxID)
		if err != nil {
			return err
		}
		if b.Run == nil || b.Run.ID != m.o.Launch.RunID || b.Status != model.StatusStarting {
			return fmt.Errorf("box %s is not starting run %s (status %s)", b.ID, m.o.Launch.RunID, b.Status)
		}
		return nil
	})
}

func (m *monitor) listen() (net.Listener, error) {
	_ = os.Remove(m.o.Socket)
	ln, err := net.Listen("unix", m.o.Socket)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", m.o.Socket, err)
	}
	return ln, nil
}

func (m *monitor) startVM() error {
	l := m.o.Launch
	if len(l.Argv) == 0 {
		return errors.New("launch plan has no command")
	}
	cmd := exec.Command(l.Argv[0], l.Argv[1:]...)
	cmd.Env = l.Env
	cmd.Dir = l.Dir
	// Its own process group: signals to the monitor's group (a terminal's
	// Ctrl-C) do not reach the VM, and the VM survives the monitor.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if m.o.VMLog != "" {
		f, err := os.OpenFile(m.o.VMLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	m.cmd = cmd
	m.start = time.Now()
	id, err := proc.Of(cmd.Process.Pid)
	if err != nil {
		// It died at once; the identity still lets the record make sense.
		boot, _ := proc.BootID()
		id = proc.Ident{PID: cmd.Process.Pid, BootID: boot}
	}
	m.vm = id
	if m.o.PIDFile != "" {
		_ = os.WriteFile(m.o.PIDFile, []byte(fmt.Sprintf("%d %d\n", id.PID, id.StartTicks)), 0o644)
	}
	go m.waitVM()
	return nil
}

// waitVM reaps the VM process and records how it ended.
func (m *monitor) waitVM() {
	err := m.cmd.Wait()
	exit := &model.Exit{Code: 0, At: time.Now()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		ws, _ := ee.Sys().(syscall.WaitStatus)
		if ws.Signaled() {
			exit.Signal = int(ws.Signal())
			exit.Code = 128 + exit.Signal
		} else {
			exit.Code = ws.ExitStatus()
		}
	} else if err != nil {
		exit.Code = -1
	}
	m.mu.Lock()
	exit.Reason = m.stopReason
	m.mu.Unlock()
	if exit.Reason == "" {
		exit.Reason = "vm process exited"
		if exit.Signal != 0 {
			exit.Reason = "vm process killed by signal " + strconv.Itoa(exit.Signal)
		}
	}
	m.exit = exit
	close(m.exited)
	m.log.Info("vm exited", "code", exit.Code, "signal", exit.Signal, "reason", exit.Reason)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if m.o.PIDFile != "" {
		_ = os.Remove(m.o.PIDFile)
	}
	var final *model.Box
	err = m.o.Store.Update(ctx, func(tx *state.Tx) error {
		b, err := boxstatus.Exit(tx, m.o.Launch.BoxID, m.o.Launch.RunID, exit)
		if errors.Is(err, boxstatus.ErrSuperseded) {
			return nil // a newer run owns the record
		}
		final = b
		return err
	})
	if err != nil {
		m.log.Error("record vm exit", "error", err)
	}
	close(m.recorded)
	if final != nil && m.o.OnExit != nil {
		m.o.OnExit(ctx, final)
	}
}

func (m *monitor) waitAgent(ctx context.Context) error {
	timeout := m.o.Launch.BootTimeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	go func() {
		select {
		case <-m.exited:
			cancel()
		case <-actx.Done():
		}
	}()
	err := m.o.Agent.WaitReady(actx, m.o.Launch.AgentSocket, m.o.Launch.Identity)
	select {
	case <-m.exited:
		return fmt.Errorf("the VM exited during boot (exit code %d) before its guest agent answered", m.exit.Code)
	default:
	}
	if err != nil {
		return fmt.Errorf("the guest agent did not answer within %s: %w", timeout, err)
	}
	return nil
}

func (m *monitor) markRunning(ctx context.Context) error {
	return m.transition(ctx, func(tx *state.Tx) (*model.Box, error) {
		return boxstatus.Ready(tx, m.o.Launch.BoxID, m.o.Launch.RunID, func(run *model.Run) {
			run.Monitor = m.self
			run.VM = m.vm
			run.StartedAt = m.start
		})
	})
}

func (m *monitor) watchOwner(ctx context.Context) {
	owner := m.o.Launch.Owner
	if err := proc.WaitExit(ctx, owner); err != nil {
		return // ctx ended: the monitor is finishing anyway
	}
	select {
	case <-m.exited:
		return
	default:
	}
	m.log.Info("owner exited; stopping the box", "owner", owner.String())
	m.requestStop(m.o.Launch.StopTimeout, "the process that started the box exited")
}

// requestStop starts stopping the VM once; later calls just wait.
func (m *monitor) requestStop(timeout time.Duration, reason string) {
	m.stopOnce.Do(func() {
		m.mu.Lock()
		m.stopReason = reason
		m.mu.Unlock()
		go m.stopVM(timeout)
	})
}

// stopVM asks the guest to power off and waits up to timeout; then the VMM
// forces the VM off; the last resort is killing the VM process group. A
// timeout of 0 (forced removal) kills at once: the VM is this monitor's
// child, and nothing of it is kept.
func (m *monitor) stopVM(timeout time.Duration) {
	ctx := context.Background()
	_ = m.transition(ctx, func(tx *state.Tx) (*model.Box, error) {
		return boxstatus.Stopping(tx, m.o.Launch.BoxID, m.o.Launch.RunID)
	})
	if timeout > 0 && m.vmHalted() && !m.resumeForStop(ctx) {
		// A guest the hypervisor stopped after a disk error cannot shut
		// down cleanly; the VMM's forced stop still flushes what the
		// hypervisor holds.
		m.log.Info("vm is halted; stopping it through the VMM")
		if m.forceViaVMM(ctx) {
			return
		}
		timeout = 0
	}
	if timeout > 0 {
		gctx, cancel := context.WithTimeout(ctx, timeout)
		m.graceful(gctx)
		select {
		case <-m.exited:
			cancel()
			return
		case <-gctx.Done():
		}
		cancel()
		m.log.Warn("vm did not stop in time; asking the VMM to force it off", "timeout", timeout)
		if m.forceViaVMM(ctx) {
			return
		}
	}
	_ = syscall.Kill(-m.vm.PID, syscall.SIGKILL)
	_ = m.cmd.Process.Kill()
}

// resumeForStop continues a VM paused by request so that its guest can
// shut down cleanly; it reports whether the VM runs again. A VM halted by a
// disk error is left alone: it would only fail again.
func (m *monitor) resumeForStop(ctx context.Context) bool {
	m.mu.Lock()
	st := m.vmState.State
	m.mu.Unlock()
	if st != VMPaused {
		return false
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	vmm, err := m.o.VMM(rctx)
	if err == nil {
		err = vmm.Resume(rctx, m.vmRef())
	}
	if err != nil {
		m.log.Warn("resume a paused VM to stop it cleanly", "error", err)
		return false
	}
	m.mu.Lock()
	m.vmState.State = VMRunning
	m.mu.Unlock()
	return true
}

// vmRef names the VM to the VMM plugin.
func (m *monitor) vmRef() sdk.VM { return sdk.VM{Handle: m.o.Launch.Handle, PID: m.vm.PID} }

// forceViaVMM has the VMM force the VM off (QEMU: "quit", which flushes
// its disks) and reports whether the VM exited within a few seconds.
func (m *monitor) forceViaVMM(ctx context.Context) bool {
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	vmm, err := m.o.VMM(fctx)
	if err != nil {
		m.log.Warn("vmm plugin unavailable for a forced stop", "error", err)
		return false
	}
	if err := vmm.Stop(fctx, m.vmRef(), true); err != nil {
		m.log.Warn("vmm forced stop failed", "error", err)
		return false
	}
	select {
	case <-m.exited:
		return true
	case <-time.After(5 * time.Second):
		m.log.Warn("vm still running after the VMM's forced stop; killing it")
		return false
	}
}

// graceful asks for a clean power-off: through the guest agent when there
// is one (it syncs and unmounts), else through the VMM.
func (m *monitor) graceful(ctx context.Context) {
	if m.o.Agent != nil && m.o.Launch.AgentSocket != "" {
		if err := m.o.Agent.Shutdown(ctx, m.o.Launch.AgentSocket); err == nil {
			return
		} else {
			m.log.Warn("guest agent shutdown failed; asking the VMM", "error", err)
		}
	}
	vmm, err := m.o.VMM(ctx)
	if err != nil {
		m.log.Warn("vmm plugin unavailable for a graceful stop", "error", err)
		return
	}
	if err := vmm.Stop(ctx, m.vmRef(), false); err != nil && !errors.Is(err, sdk.ErrUnsupported) {
		m.log.Warn("vmm graceful stop failed", "error", err)
	}
}

func (m *monitor) serve(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		m.handlers.Add(1)
		go m.handle(conn)
	}
}

func (m *monitor) handle(conn net.Conn) {
	defer m.handlers.Done()
	defer conn.Close()
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return
	}
	var req request
	if err := json.Unmarshal(line, &req); err != nil {
		_ = json.NewEncoder(conn).Encode(response{Error: "bad request: " + err.Error()})
		return
	}
	switch req.Op {
	case "status":
		st := model.StatusRunning
		select {
		case <-m.exited:
			st = model.StatusStopped
		default:
		}
		_ = json.NewEncoder(conn).Encode(response{OK: true, Status: st, VM: m.vm})
	case "stop":
		m.requestStop(time.Duration(req.TimeoutMS)*time.Millisecond, "stopped")
		<-m.recorded
		_ = json.NewEncoder(conn).Encode(response{OK: true, Status: model.StatusStopped, VM: m.vm, Exit: m.exit})
	case "hold":
		m.hold(conn, time.Duration(req.TimeoutMS)*time.Millisecond)
	default:
		_ = json.NewEncoder(conn).Encode(response{Error: "unknown op " + strconv.Quote(req.Op)})
	}
}

// hold guards a quiesce bracket (see Hold): unless the holder sends
// "release" within limit, the VM is resumed and the guest thawed, whatever
// became of the holder.
func (m *monitor) hold(conn net.Conn, limit time.Duration) {
	if limit <= 0 || limit > maxHold {
		limit = maxHold
	}
	m.mu.Lock()
	m.holds++
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.holds--
		m.holdEnded = time.Now().UTC()
		m.mu.Unlock()
	}()
	if err := json.NewEncoder(conn).Encode(response{OK: true, VM: m.vm}); err != nil {
		return
	}
	_ = conn.SetReadDeadline(time.Now().Add(limit))
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	var req request
	if err == nil && json.Unmarshal(line, &req) == nil && req.Op == "release" {
		_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_ = json.NewEncoder(conn).Encode(response{OK: true})
		return
	}
	select {
	case <-m.exited:
		return
	default:
	}
	m.log.Warn("a quiesce bracket ended without release: resuming the VM and thawing the guest", "limit", limit, "error", err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if vmm, err := m.o.VMM(ctx); err != nil {
		m.log.Error("resume after an abandoned bracket: vmm plugin", "error", err)
	} else if err := vmm.Resume(ctx, m.vmRef()); err != nil {
		m.log.Error("resume after an abandoned bracket", "error", err)
	}
	if m.o.Agent != nil && m.o.Launch.AgentSocket != "" {
		if err := m.o.Agent.Thaw(ctx, m.o.Launch.AgentSocket); err != nil {
			m.log.Error("thaw after an abandoned bracket", "error", err)
		}
	}
}

// maxHold bounds a quiesce bracket, whatever its holder asks for.
const maxHold = 2 * time.Minute

// checkHealth runs the box's health check every interval until the VM
// exits. Failures during the start period do not count; Retries failures
// in a row make the box unhealthy; one success makes it healthy again.
func (m *monitor) checkHealth(ctx context.Context) {
	h := m.o.Launch.Health
	started := time.Now()
	streak := 0
	m.setHealth(ctx, model.Health{Status: "starting"})
	t := time.NewTicker(h.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.exited:
			return
		case <-t.C:
		}
		ok, out := m.o.Probe(ctx, m.o.Launch.AgentSocket, h.Cmd, h.Timeout)
		if len(out) > 4096 {
			out = out[len(out)-4096:]
		}
		health := model.Health{LastOutput: out, LastCheck: time.Now().UTC()}
		switch {
		case ok:
			streak = 0
			health.Status = "healthy"
		case time.Since(started) < h.StartPeriod:
			health.Status = "starting"
		default:
			streak++
			health.Status = "starting"
			if streak >= h.Retries {
				health.Status = "unhealthy"
			}
		}
		health.FailingStreak = streak
		m.setHealth(ctx, health)
	}
}

func (m *monitor) setHealth(ctx context.Context, h model.Health) {
	if err := m.update(ctx, func(b *model.Box) {
		if b.Health.Status == "healthy" && h.Status == "starting" && h.FailingStreak > 0 {
			// A healthy box stays healthy until Retries failures in a row.
			h.Status = "healthy"
		}
		b.Health = h
	}); err != nil {
		m.log.Debug("record health", "error", err)
	}
}
