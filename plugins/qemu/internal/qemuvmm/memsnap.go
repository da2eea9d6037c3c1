package qemuvmm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/boxctl/boxctl/plugins/qemu/internal/qmp"
	"github.com/boxctl/boxctl/sdk"
)

// stateMagic is how a QEMU migration stream starts: QEMU_VM_FILE_MAGIC
// ("QEVM") and QEMU_VM_FILE_VERSION (3), big-endian.
const stateMagic = "QEVM\x00\x00\x00\x03"

// layoutVersion names the way qemuArgs lays out devices. A state loads
// only into a QEMU with the same devices and block node names as the one
// that saved it: bump it whenever qemuArgs changes either.
const layoutVersion = "1"

// SaveState streams the paused VM's state to path with QEMU's migration:
// QEMU may run as a user that cannot create files where the core keeps
// checkpoints, and its syscall filter forbids the exec: transport, so the
// plugin creates the file itself and hands QEMU the descriptor (getfd,
// then migrate to "fd:NAME"). The file is written under a temporary name
// next to path and linked to path once QEMU says the migration completed,
// so path only ever holds a complete state (synced to disk by the caller).
//
// QEMU ends a completed migration in run state "postmigrate", with the
// disks' block nodes inactive (flushed, locks released); Resume ("cont")
// reactivates them and runs the VM. A cancelled or failed migration
// reactivates them itself.
func (v *VMM) SaveState(ctx context.Context, vm sdk.VM, path string) (sdk.SavedState, error) {
	started := time.Now()
	h, err := decodeHandle(vm.Handle)
	if err != nil {
		return sdk.SavedState{}, err
	}
	// The inputs as they were when the VM started: a kernel replaced
	// since then is not the one in the saved memory.
	inputs := h.Inputs
	if len(inputs) == 0 {
		return sdk.SavedState{}, fmt.Errorf("SaveState: the VM's handle has no state inputs (it was started by an older qemu plugin): restart the box first: %w", sdk.ErrInvalidState)
	}
	if _, err := os.Lstat(path); err == nil {
		return sdk.SavedState{}, fmt.Errorf("SaveState: %s exists: give a new file: %w", path, sdk.ErrAlreadyExists)
	}
	q, err := qmp.Dial(ctx, h.QMP)
	if err != nil {
		if gone(vm.PID) {
			return sdk.SavedState{}, fmt.Errorf("the VM is not running: %w", sdk.ErrInvalidState)
		}
		return sdk.SavedState{}, err
	}
	defer q.Close()
	if err := requirePaused(ctx, q, "SaveState", "the saved memory would not match the disks taken with it"); err != nil {
		return sdk.SavedState{}, err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return sdk.SavedState{}, fmt.Errorf("SaveState: create the state file next to %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		f.Close()
		if !ok {
			_ = os.Remove(tmp)
		}
	}()
	// QEMU's default cap (128 MiB/s in 7.2) would make a 512 MiB guest
	// take seconds; the VM is paused, so the whole stream is one pass and
	// the only limit worth having is the disk's.
	if _, err := q.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(math.MaxInt64 / 2)}); err != nil {
		return sdk.SavedState{}, fmt.Errorf("SaveState: set the migration bandwidth: %w", err)
	}
	const fdName = "boxctl-state"
	if _, err := q.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": fdName}, f); err != nil {
		return sdk.SavedState{}, fmt.Errorf("SaveState: pass the state file to QEMU: %w", err)
	}
	// From here on QEMU may be writing: whatever happens to ctx, stop it
	// before the temporary file goes.
	later, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if _, err := q.Execute(ctx, "migrate", map[string]any{"uri": "fd:" + fdName}); err != nil {
		_, _ = q.Execute(later, "closefd", map[string]any{"fdname": fdName})
		return sdk.SavedState{}, fmt.Errorf("SaveState: start writing the VM's state: %w", err)
	}
	if err := waitMigration(ctx, later, q); err != nil {
		if _, cerr := q.Execute(later, "migrate_cancel", nil); cerr != nil {
			v.log.Warn("SaveState: cancel the migration", "err", cerr)
		}
		// Until QEMU says it stopped, it may still write to the file.
		_ = waitMigrationEnd(later, q)
		return sdk.SavedState{}, err
	}
	// No fsync here: the VM is paused until SaveState returns, and syncing
	// hundreds of MiB would stop the guest that much longer. Durability is
	// the caller's, once the VM runs again (see the contract).
	st, err := f.Stat()
	if err != nil {
		return sdk.SavedState{}, err
	}
	if err := os.Link(tmp, path); err != nil {
		// Link, not rename: a file that appeared at path meanwhile stays.
		if errors.Is(err, os.ErrExist) {
			return sdk.SavedState{}, fmt.Errorf("SaveState: %s appeared while the state was written: %w", path, sdk.ErrAlreadyExists)
		}
		return sdk.SavedState{}, fmt.Errorf("SaveState: %w", err)
	}
	ok = false // the temporary name goes; path stays
	v.log.Debug("state saved", "path", path, "bytes", st.Size(), "took", time.Since(started))
	return sdk.SavedState{Size: st.Size(), Inputs: inputs}, nil
}

// migration is what query-migrate reports.
type migration struct {
	Status string `json:"status"`
	Error  string `json:"error-desc"`
}

func queryMigrate(ctx context.Context, q *qmp.Conn) (migration, error) {
	raw, err := q.Execute(ctx, "query-migrate", nil)
	if err != nil {
		return migration{}, err
	}
	var m migration
	if err := json.Unmarshal(raw, &m); err != nil {
		return migration{}, fmt.Errorf("query-migrate: bad answer %s: %w", raw, err)
	}
	return m, nil
}

// waitMigration polls until the migration completed or failed, or ctx
// ends. Each query runs under conn, not ctx: a query cut off half-way would
// leave the connection unusable for migrate_cancel.
func waitMigration(ctx, conn context.Context, q *qmp.Conn) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		m, err := queryMigrate(conn, q)
		if err != nil {
			return fmt.Errorf("SaveState: %w", err)
		}
		switch m.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("SaveState: QEMU could not write the VM's state: %s (%s)", m.Error, m.Status)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("SaveState: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// waitMigrationEnd waits until a cancelled migration is over.
func waitMigrationEnd(ctx context.Context, q *qmp.Conn) error {
	for {
		m, err := queryMigrate(ctx, q)
		if err != nil {
			return err
		}
		if m.Status != "active" && m.Status != "cancelling" && m.Status != "setup" && m.Status != "device" {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// StateInputs fingerprints what a saved state of a VM planned with spec
// depends on. Files are named by path, size, modification time and inode,
// which change when the file is replaced or rewritten; nothing is hashed.
func (v *VMM) StateInputs(ctx context.Context, spec sdk.VMSpec) (map[string]string, error) {
	s := v.settings()
	qemuPath, err := v.qemuPath(s)
	if err != nil {
		return nil, err
	}
	kernel, initrd, err := v.guestFiles(s)
	if err != nil {
		return nil, err
	}
	jail, err := confinement(spec.Sandbox)
	if err != nil {
		return nil, err
	}
	accel, _, err := v.pickAccel(ctx, s, &jail)
	if err != nil {
		return nil, err
	}
	return v.inputs(spec, s, qemuPath, kernel, initrd, accel)
}

func (v *VMM) inputs(spec sdk.VMSpec, s settings, qemuPath, kernel, initrd, accel string) (map[string]string, error) {
	in := map[string]string{
		"machine": s.Machine,
		"accel":   accel,
		"cpu":     cpuModel(accel),
		"vcpus":   strconv.Itoa(spec.VCPUs),
		"memory":  strconv.FormatUint(spec.MemoryMiB, 10) + "M",
		"devices": deviceLayout(spec),
		"vmm":     "qemu plugin " + Version + " layout " + layoutVersion,
	}
	for _, f := range []struct{ name, path string }{{"kernel", kernel}, {"initramfs", initrd}, {"qemu", qemuPath}} {
		id, err := fileID(f.path)
		if err != nil {
			return nil, fmt.Errorf("state inputs: the %s: %w", f.name, err)
		}
		in[f.name] = id
	}
	ver, err := v.qemuVersion(qemuPath, in["qemu"])
	if err != nil {
		return nil, err
	}
	in["qemu_version"] = ver
	return in, nil
}

// fileID names a file's identity without reading it.
func fileID(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	var ino uint64
	if st != nil {
		ino = st.Ino
	}
	return fmt.Sprintf("%s size=%d mtime=%s inode=%d", path, fi.Size(), fi.ModTime().UTC().Format(time.RFC3339Nano), ino), nil
}

// deviceLayout is the VM's devices as a state depends on them: each
// disk's role and mode in guest order, and the network device.
func deviceLayout(spec sdk.VMSpec) string {
	var disks []string
	for _, d := range spec.Disks {
		mode := "rw"
		if d.ReadOnly {
			mode = "ro"
		}
		disks = append(disks, d.Role.String()+":"+mode)
	}
	net := "none"
	if spec.Network.Mode == sdk.NetworkUser {
		net = "user"
	}
	layout := fmt.Sprintf("disks=[%s] net=%s", strings.Join(disks, ","), net)
	if len(spec.Shares) > 0 {
		// Only with shares, so states saved before shares existed still load.
		layout += fmt.Sprintf(" shares=%d", len(spec.Shares))
	}
	return layout
}

// qemuVersion runs `qemu --version` once per binary identity (id) in this
// plugin process.
func (v *VMM) qemuVersion(path, id string) (string, error) {
	v.mu.Lock()
	ver, ok := v.versions[id]
	v.mu.Unlock()
	if ok {
		return ver, nil
	}
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("state inputs: %s --version: %w", path, err)
	}
	ver, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	v.mu.Lock()
	if v.versions == nil {
		v.versions = map[string]string{}
	}
	v.versions[id] = ver
	v.mu.Unlock()
	return ver, nil
}

// checkRestore refuses a saved state that cannot load into the VM planned
// with inputs: one saved with other inputs, or a file that is no QEMU
// state.
func checkRestore(r *sdk.RestoreSpec, inputs map[string]string) error {
	names := make([]string, 0, len(inputs)+len(r.Inputs))
	for k := range inputs {
		names = append(names, k)
	}
	for k := range r.Inputs {
		if _, ok := inputs[k]; !ok {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	for _, k := range names {
		was, wok := r.Inputs[k]
		now, nok := inputs[k]
		if wok && nok && was == now {
			continue
		}
		if !wok {
			was = "(none)"
		}
		if !nok {
			now = "(none)"
		}
		return fmt.Errorf("saved state %s: input %q was %q when it was saved and is %q now: it cannot be restored; discard it (and cold-boot): %w", r.Path, k, was, now, sdk.ErrInvalidState)
	}
	f, err := os.Open(r.Path)
	if err != nil {
		return fmt.Errorf("saved state: %w: %w", err, sdk.ErrInvalidArgument)
	}
	defer f.Close()
	head := make([]byte, len(stateMagic))
	if _, err := io.ReadFull(f, head); err != nil || string(head) != stateMagic {
		return fmt.Errorf("saved state %s is not a QEMU state file (it does not start with QEMU's migration header): discard it: %w", r.Path, sdk.ErrInvalidArgument)
	}
	return nil
}

// openState opens a saved state for QEMU's -incoming, read-only.
func openState(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("saved state %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// continueIncoming waits for QEMU to load the saved state and then runs
// the VM: the state was saved paused, so QEMU ends the load paused. It
// uses the plugin's QMP socket (one client at a time: a plugin call waits
// the few milliseconds this takes). QEMU exits by itself when the load
// fails, which ends the wait.
func continueIncoming(ctx context.Context, sock string) error {
	var q *qmp.Conn
	var err error
	for q == nil {
		if q, err = qmp.Dial(ctx, sock); err != nil {
			select {
			case <-ctx.Done():
				return fmt.Errorf("restore: %w (last: %v)", ctx.Err(), err)
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	defer q.Close()
	for {
		raw, err := q.Execute(ctx, "query-status", nil)
		if err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		var st struct {
			Status string `json:"status"`
		}
		_ = json.Unmarshal(raw, &st)
		switch st.Status {
		case "inmigrate":
		case "running":
			return nil
		default:
			if _, err := q.Execute(ctx, "cont", nil); err != nil {
				return fmt.Errorf("restore: run the VM after loading its state (status %s): %w", st.Status, err)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("restore: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
