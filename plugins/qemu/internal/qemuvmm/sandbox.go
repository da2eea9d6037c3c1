package qemuvmm

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/boxctl/boxctl/sdk"
)

// jail is how the launcher confines QEMU.
type jail struct {
	// Disabled turns the syscall filter and no-new-privileges off, and
	// QEMU runs as the launcher's user (debugging only).
	Disabled bool `json:"disabled,omitempty"`
	// UID and GID, when not 0, are the unprivileged user QEMU runs as;
	// Groups its supplementary groups (the group of /dev/kvm when KVM is
	// used), none otherwise.
	UID    uint32   `json:"uid,omitempty"`
	GID    uint32   `json:"gid,omitempty"`
	Groups []uint32 `json:"groups,omitempty"`
	// Cgroup is a cgroup v2 directory QEMU is started in.
	Cgroup string `json:"cgroup,omitempty"`
}

// cgroupRoot is where the core's per-box cgroups live.
const cgroupRoot = "/sys/fs/cgroup"

// confinement checks the spec's sandbox and turns it into a jail.
func confinement(sb sdk.Sandbox) (jail, error) {
	if sb.Disabled {
		return jail{Disabled: true}, nil
	}
	j := jail{UID: sb.UID, GID: sb.GID, Cgroup: sb.Cgroup}
	if j.UID != 0 || j.GID != 0 {
		if j.UID == 0 || j.GID == 0 {
			return jail{}, fmt.Errorf("spec.Sandbox: UID %d, GID %d: set both to an unprivileged ID, or neither: %w", j.UID, j.GID, sdk.ErrInvalidArgument)
		}
		if os.Geteuid() != 0 {
			return jail{}, fmt.Errorf("spec.Sandbox.UID %d: the plugin runs as uid %d and cannot switch users; only a root boxctl asks for this: %w", j.UID, os.Geteuid(), sdk.ErrInvalidArgument)
		}
	}
	if j.Cgroup != "" {
		clean := filepath.Clean(j.Cgroup)
		if clean != j.Cgroup || !strings.HasPrefix(clean, cgroupRoot+"/") {
			return jail{}, fmt.Errorf("spec.Sandbox.Cgroup %q: want a clean absolute path under %s: %w", j.Cgroup, cgroupRoot, sdk.ErrInvalidArgument)
		}
	}
	return j, nil
}

// kvmAccess reports whether uid (with primary group gid and no other
// groups) can open dev read-write, and which group it needs for that (-1
// for none).
func kvmAccess(dev string, uid, gid uint32) (group int, ok bool, why string) {
	st, err := statT(dev)
	if err != nil {
		return -1, false, err.Error()
	}
	switch {
	case st.Mode&0o006 == 0o006 || st.Uid == uid && st.Mode&0o600 == 0o600:
		return -1, true, ""
	case st.Mode&0o060 == 0o060:
		if st.Gid == gid {
			return -1, true, ""
		}
		return int(st.Gid), true, ""
	}
	return -1, false, fmt.Sprintf("%s is mode %04o owned by %d:%d", dev, st.Mode&0o7777, st.Uid, st.Gid)
}

// readableBy checks that uid (groups: gid and extra) can read path: every
// directory above it searchable, the file readable, by mode bits.
func readableBy(path string, uid, gid uint32, extra []uint32) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	abs, err = filepath.EvalSymlinks(abs)
	if err != nil {
		return err
	}
	inGroup := func(g uint32) bool {
		if g == gid {
			return true
		}
		for _, x := range extra {
			if x == g {
				return true
			}
		}
		return false
	}
	allowed := func(st *syscall.Stat_t, bit uint32) bool {
		switch {
		case st.Uid == uid:
			return st.Mode&(bit<<6) != 0
		case inGroup(st.Gid):
			return st.Mode&(bit<<3) != 0
		}
		return st.Mode&bit != 0
	}
	for dir := filepath.Dir(abs); ; dir = filepath.Dir(dir) {
		st, err := statT(dir)
		if err != nil {
			return err
		}
		if !allowed(st, 0o1) {
			return fmt.Errorf("%s is not readable by the confined QEMU (uid %d): directory %s is mode %04o owned by %d:%d", path, uid, dir, st.Mode&0o7777, st.Uid, st.Gid)
		}
		if dir == "/" {
			break
		}
	}
	st, err := statT(abs)
	if err != nil {
		return err
	}
	if !allowed(st, 0o4) {
		return fmt.Errorf("%s is not readable by the confined QEMU (uid %d): it is mode %04o owned by %d:%d", path, uid, st.Mode&0o7777, st.Uid, st.Gid)
	}
	return nil
}

func statT(path string) (*syscall.Stat_t, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return &st, nil
}
