package core

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/state"
	"github.com/boxctl/boxctl/sdk"
)

// counterSandboxUIDs counts the per-box hypervisor users handed out in
// this home; box n runs as sandbox.uid_base + n.
const counterSandboxUIDs = "sandbox_uids"

// cgroupMount is where the host's cgroup v2 hierarchy is expected.
const cgroupMount = "/sys/fs/cgroup"

// sandboxSpec says how the VMM confines the box's hypervisor (see
// docs/security.md): off when the config says so; otherwise a syscall
// filter and no new privileges, plus, for a root boxctl, the box's own
// unprivileged user, and a cgroup with the box's limits where the host
// allows one.
func (r *Runtime) sandboxSpec(ctx context.Context, b *model.Box, info sdk.Info) (sdk.Sandbox, error) {
	sc := r.cfg.Sandbox
	if !sc.Enabled {
		return sdk.Sandbox{Disabled: true}, nil
	}
	if !info.Capabilities.Sandbox {
		r.log.Debug("the VMM plugin does not confine the hypervisor (no \"sandbox\" capability)", "vmm", info.Name)
		return sdk.Sandbox{}, nil
	}
	var sb sdk.Sandbox
	if os.Geteuid() == 0 {
		uid, err := r.sandboxUID(ctx, b.ID, sc)
		if err != nil {
			return sdk.Sandbox{}, err
		}
		sb.UID, sb.GID = uid, uid
	}
	if sc.Cgroups {
		cg := cgroupV2{root: cgroupMount, isCgroup2: isCgroup2}
		dir, err := cg.create(b.ID, b.Config.MemoryMiB, b.Config.CPUs)
		if err != nil {
			r.log.Debug("no cgroup v2 limits for the box", "box", b.ID, "reason", err)
		} else {
			sb.Cgroup = dir
		}
	}
	return sb, nil
}

// sandboxUID returns the box's hypervisor user, allocating one at its
// first start: the next number of the home's counter above uid_base,
// skipping IDs the host's user database knows.
func (r *Runtime) sandboxUID(ctx context.Context, id string, sc config.Sandbox) (uint32, error) {
	var uid uint32
	err := r.store.Update(ctx, func(tx *state.Tx) error {
		cur, err := tx.Box(id)
		if err != nil {
			return err
		}
		if cur.SandboxUID != 0 {
			uid = cur.SandboxUID
			return nil
		}
		start := tx.Counter(counterSandboxUIDs)
		n := start
		for skipped := 0; ; skipped++ {
			n++
			next := uint64(sc.UIDBase) + n
			if next > config.MaxSandboxUID {
				return fmt.Errorf("box %s: no sandbox user ID left above sandbox.uid_base %d: lower uid_base in the config: %w", cur.Name, sc.UIDBase, ErrInvalidState)
			}
			if !idTaken(uint32(next)) {
				uid = uint32(next)
				break
			}
			if skipped > 1000 {
				return fmt.Errorf("box %s: the host has users or groups at every ID from %d on: set sandbox.uid_base to a free range: %w", cur.Name, next-1000, ErrInvalidState)
			}
		}
		cur.SandboxUID = uid
		if err := tx.PutBox(cur); err != nil {
			return err
		}
		return tx.AddCounter(counterSandboxUIDs, n-start)
	})
	return uid, err
}

// idTaken reports whether the host knows a user or group with this ID.
func idTaken(id uint32) bool {
	s := strconv.FormatUint(uint64(id), 10)
	if _, err := user.LookupId(s); err == nil {
		return true
	}
	_, err := user.LookupGroupId(s)
	return err == nil
}

// cgroupV2 makes per-box cgroups with memory and CPU limits in a cgroup v2
// hierarchy: root/boxctl/<box id>.
type cgroupV2 struct {
	root string
	// isCgroup2 reports whether a directory is a cgroup v2 mount (a test
	// stands a temporary directory in for one).
	isCgroup2 func(string) bool
}

func isCgroup2(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// cgroupOverheadMiB is what QEMU itself may use on top of guest memory
// (device emulation, TCG's translation cache, I/O buffers).
const cgroupOverheadMiB = 512

// usable says why root cannot hold per-box cgroups, or nil.
func (c cgroupV2) usable() error {
	if !c.isCgroup2(c.root) {
		return fmt.Errorf("%s is not a cgroup v2 mount (a cgroup v1 or hybrid host)", c.root)
	}
	b, err := os.ReadFile(filepath.Join(c.root, "cgroup.controllers"))
	if err != nil {
		return err
	}
	have := strings.Fields(string(b))
	for _, want := range []string{"memory", "cpu"} {
		if !slices.Contains(have, want) {
			return fmt.Errorf("the %s controller is not available in %s (it has: %s)", want, c.root, strings.Join(have, " "))
		}
	}
	if err := unix.Access(c.root, unix.W_OK); err != nil {
		return fmt.Errorf("%s is not writable by this user", c.root)
	}
	return nil
}

// create makes (or refreshes) the box's cgroup with memory.max = guest
// memory + overhead and cpu.max = vCPUs plus half a CPU for QEMU's own
// threads, and returns its directory. The launcher starts the hypervisor
// in it and removes it when the VM ends.
func (c cgroupV2) create(boxID string, memoryMiB uint64, vcpus int) (string, error) {
	if err := c.usable(); err != nil {
		return "", err
	}
	parent := filepath.Join(c.root, "boxctl")
	dir := filepath.Join(parent, boxID)
	// Controllers are granted top-down: each level enables them for the
	// one below.
	if err := enableControllers(c.root); err != nil {
		return "", err
	}
	if err := os.Mkdir(parent, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", err
	}
	if err := enableControllers(parent); err != nil {
		return "", err
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", err
	}
	const period = 100000
	limits := map[string]string{
		"memory.max": strconv.FormatUint((memoryMiB+cgroupOverheadMiB)<<20, 10),
		"cpu.max":    fmt.Sprintf("%d %d", (max(vcpus, 1)*2+1)*period/2, period),
	}
	for file, v := range limits {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(v+"\n"), 0o644); err != nil {
			_ = os.Remove(dir)
			return "", fmt.Errorf("set %s: %w", file, err)
		}
	}
	return dir, nil
}

func enableControllers(dir string) error {
	f := filepath.Join(dir, "cgroup.subtree_control")
	b, err := os.ReadFile(f)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	have := strings.Fields(string(b))
	if slices.Contains(have, "memory") && slices.Contains(have, "cpu") {
		return nil
	}
	if err := os.WriteFile(f, []byte("+memory +cpu\n"), 0o644); err != nil {
		return fmt.Errorf("enable the memory and cpu controllers in %s: %w", dir, err)
	}
	return nil
}
