package core

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/state"
	"github.com/boxctl/boxctl/internal/namecheck"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/guestboot"
)

// DefaultVolumeSize is the size of a volume created without one.
const DefaultVolumeSize = 1 << 30

// ParseMount reads a -v argument: HOSTDIR:GUESTPATH[:ro|:rw] shares a host
// directory (HOSTDIR absolute, or starting with "." and then made absolute
// against the working directory), NAME:GUESTPATH[:ro|:rw] attaches the
// named volume NAME.
func ParseMount(arg string) (model.Mount, error) {
	f := strings.Split(arg, ":")
	if len(f) < 2 || len(f) > 3 {
		return model.Mount{}, fmt.Errorf("mount %q: want HOSTDIR:GUESTPATH[:ro] or VOLUME:GUESTPATH[:ro]: %w", arg, ErrInvalidArgument)
	}
	m := model.Mount{Source: f[0], Target: f[1]}
	if len(f) == 3 {
		switch f[2] {
		case "ro":
			m.ReadOnly = true
		case "rw":
		default:
			return model.Mount{}, fmt.Errorf("mount %q: mode %q is neither ro nor rw: %w", arg, f[2], ErrInvalidArgument)
		}
	}
	if strings.HasPrefix(m.Source, "/") || strings.HasPrefix(m.Source, ".") {
		m.Kind = model.MountBind
		abs, err := filepath.Abs(m.Source)
		if err != nil {
			return model.Mount{}, fmt.Errorf("mount %q: %w", arg, err)
		}
		m.Source = abs
	} else {
		m.Kind = model.MountVolume
	}
	return m, nil
}

// checkMounts refuses mounts a start could not honour: relative or
// duplicate targets, a host directory that is not one, a bad volume name.
func checkMounts(ms []model.Mount) error {
	targets := map[string]bool{}
	for _, m := range ms {
		if !strings.HasPrefix(m.Target, "/") {
			return fmt.Errorf("mount %s: the path in the box %q is not absolute; write it as /%s: %w", m.Source, m.Target, m.Target, ErrInvalidArgument)
		}
		t := path.Clean(m.Target)
		if t == "/" {
			return fmt.Errorf("mount %s: cannot be mounted over the box's root /: %w", m.Source, ErrInvalidArgument)
		}
		if targets[t] {
			return fmt.Errorf("mount %s: %s is the target of two mounts: %w", m.Source, t, ErrInvalidArgument)
		}
		targets[t] = true
		switch m.Kind {
		case model.MountBind:
			if !filepath.IsAbs(m.Source) {
				return fmt.Errorf("mount: host directory %q is not an absolute path: %w", m.Source, ErrInvalidArgument)
			}
			st, err := os.Stat(m.Source)
			if err != nil {
				return fmt.Errorf("mount: host directory %s: %w (create it first): %w", m.Source, err, ErrInvalidArgument)
			}
			if !st.IsDir() {
				return fmt.Errorf("mount: %s is not a directory; only directories can be shared: %w", m.Source, ErrInvalidArgument)
			}
		case model.MountVolume:
			if !validVolumeName(m.Source) {
				return fmt.Errorf("mount: %q is neither a host directory (start it with / or ./) nor a volume name (1-128 letters, digits, '_', '.' or '-', starting with a letter or digit): %w", m.Source, ErrInvalidArgument)
			}
		default:
			return fmt.Errorf("mount %s: unknown kind %q: %w", m.Source, m.Kind, ErrInvalidArgument)
		}
	}
	return nil
}

func validVolumeName(name string) bool { return namecheck.BoxName(name) }

// checkVolumesExist refuses, in the transaction that records a box, a
// mount of a volume that does not exist.
func checkVolumesExist(tx *state.Tx, c model.BoxConfig) error {
	for _, m := range c.Mounts {
		if m.Kind != model.MountVolume {
			continue
		}
		if _, err := tx.Volume(m.Source); err != nil {
			if errors.Is(err, model.ErrNotFound) {
				return fmt.Errorf("volume %s does not exist: create it with `boxctl volume create %s`: %w", m.Source, m.Source, ErrNotFound)
			}
			return err
		}
	}
	return nil
}

// hasMounts: the box has shares or volumes, whose contents no memory
// snapshot of the box can capture.
func hasMounts(b *model.Box) bool { return len(b.Config.Mounts) > 0 }

// refuseMounts is the error of checkpoint, suspend and fork of a box with
// mounts: a saved memory image would hold the guest's page cache and
// filesystem state of shares and volumes, which go on changing (from the
// host, or from another box) while the image waits, and a VM restored from
// it would corrupt them.
func refuseMounts(op string, b *model.Box) error {
	if !hasMounts(b) {
		return nil
	}
	return fmt.Errorf("%s %s: the box has host directory shares or volumes (-v), whose contents a memory snapshot cannot hold; stop the box and use snapshots or clones instead: %w", op, b.Name, sdk.ErrUnsupported)
}

// volumeConflict refuses to start box b while another running box has one
// of its volumes and either of them writes to it: ext4 mounted by two
// kernels at once is corrupted. Checked in the transaction that marks b
// starting, so two starts cannot both pass.
func volumeConflict(tx *state.Tx, b *model.Box) error {
	want := map[string]bool{} // volume -> read-only
	for _, m := range b.Config.Mounts {
		if m.Kind == model.MountVolume {
			want[m.Source] = m.ReadOnly
		}
	}
	if len(want) == 0 {
		return nil
	}
	boxes, err := tx.Boxes()
	if err != nil {
		return err
	}
	for _, o := range boxes {
		if o.ID == b.ID || !o.Status.Active() {
			continue
		}
		for _, m := range o.Config.Mounts {
			ro, ok := want[m.Source]
			if m.Kind != model.MountVolume || !ok || (ro && m.ReadOnly) {
				continue
			}
			return fmt.Errorf("volume %s is attached to running box %s, and a volume is attached read-write to one running box at a time (read-only to any number): stop %s first, or attach the volume with :ro in both: %w",
				m.Source, o.Name, o.Name, ErrInvalidState)
		}
	}
	return nil
}

// prepareMounts adds b's shares and volume disks to spec and returns what
// the guest mounts where. A host directory is resolved (symlinks and all)
// now, so that the VMM gets the directory the user named at this moment.
func (r *Runtime) prepareMounts(ctx context.Context, b *model.Box, spec *sdk.VMSpec) ([]guestboot.Mount, error) {
	var out []guestboot.Mount
	var disks sdk.DiskBackendClient
	for i, m := range b.Config.Mounts {
		target := path.Clean(m.Target)
		switch m.Kind {
		case model.MountBind:
			real, err := filepath.EvalSymlinks(m.Source)
			if err != nil {
				return nil, fmt.Errorf("box %s: host directory %s: %w", b.Name, m.Source, err)
			}
			if st, err := os.Stat(real); err != nil || !st.IsDir() {
				return nil, fmt.Errorf("box %s: host directory %s is no longer a directory: %w", b.Name, m.Source, ErrInvalidState)
			}
			tag := fmt.Sprintf("boxctl%d", i)
			spec.Shares = append(spec.Shares, sdk.ShareSpec{Tag: tag, HostPath: real, ReadOnly: m.ReadOnly})
			out = append(out, guestboot.Mount{Kind: guestboot.MountShare, Source: tag, Target: target, ReadOnly: m.ReadOnly})
		case model.MountVolume:
			var v model.Volume
			if err := r.store.View(ctx, func(tx *state.Tx) error {
				var err error
				v, err = tx.Volume(m.Source)
				return err
			}); err != nil {
				if errors.Is(err, model.ErrNotFound) {
					return nil, fmt.Errorf("box %s: volume %s was removed: create it again (boxctl volume create %s) or recreate the box without it: %w", b.Name, m.Source, m.Source, ErrNotFound)
				}
				return nil, err
			}
			if disks == nil {
				var err error
				if disks, err = r.plugins.Disks(ctx); err != nil {
					return nil, fmt.Errorf("storage plugin: %w", err)
				}
			}
			d, err := disks.GetDisk(ctx, v.DiskID)
			if err != nil {
				return nil, fmt.Errorf("box %s: the disk of volume %s: %w", b.Name, v.Name, err)
			}
			ds, err := r.checkedDisk(b, r.cfg.Storage, "disk of volume "+v.Name, d.Path, d.Format, d.BackingChain)
			if err != nil {
				return nil, err
			}
			ds.Role, ds.ReadOnly = sdk.DiskRoleData, m.ReadOnly
			dev, err := guestboot.DeviceName(len(spec.Disks))
			if err != nil {
				return nil, fmt.Errorf("box %s: too many volumes: %w", b.Name, err)
			}
			spec.Disks = append(spec.Disks, ds)
			out = append(out, guestboot.Mount{Kind: guestboot.MountDisk, Source: dev, Target: target, ReadOnly: m.ReadOnly})
		}
	}
	return out, nil
}

// VolumeUser is a box that mounts a volume.
type VolumeUser struct {
	Box      string `json:"box"`
	ID       string `json:"id"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"read_only"`
	Running  bool   `json:"running"`
}

// VolumeInfo is a volume with the boxes that mount it.
type VolumeInfo struct {
	model.Volume
	// Path is the volume's disk file.
	Path   string       `json:"path,omitempty"`
	UsedBy []VolumeUser `json:"used_by"`
}

// CreateVolume makes a named volume of size bytes (DefaultVolumeSize when
// 0): an empty ext4 disk in the storage plugin's store.
func (r *Runtime) CreateVolume(ctx context.Context, name string, size uint64) (VolumeInfo, error) {
	if err := r.checkOpen(); err != nil {
		return VolumeInfo{}, err
	}
	if !validVolumeName(name) {
		return VolumeInfo{}, fmt.Errorf("volume create: invalid name %q: use 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit: %w", name, ErrInvalidArgument)
	}
	if size == 0 {
		size = DefaultVolumeSize
	}
	if err := config.CheckDiskSize(size); err != nil {
		return VolumeInfo{}, fmt.Errorf("volume create %s: %v: %w", name, err, ErrInvalidArgument)
	}
	v := model.Volume{Name: name, DiskID: "vol" + newID()[:24], Size: size, CreatedAt: time.Now().UTC()}
	exists := func(tx *state.Tx) error {
		if _, err := tx.Volume(name); err == nil {
			return fmt.Errorf("volume create: volume %s already exists: %w", name, ErrAlreadyExists)
		} else if !errors.Is(err, model.ErrNotFound) {
			return err
		}
		return nil
	}
	if err := r.store.View(ctx, exists); err != nil {
		return VolumeInfo{}, err
	}
	disks, err := r.plugins.Disks(ctx)
	if err != nil {
		return VolumeInfo{}, fmt.Errorf("storage plugin: %w", err)
	}
	d, err := disks.CreateDisk(ctx, sdk.CreateDiskRequest{ID: v.DiskID, Size: size, Filesystem: guestboot.FSType})
	if err != nil {
		return VolumeInfo{}, fmt.Errorf("volume create %s: %w", name, err)
	}
	err = r.store.Update(ctx, func(tx *state.Tx) error {
		if err := exists(tx); err != nil {
			return err
		}
		return tx.PutVolume(v)
	})
	if err != nil {
		_ = disks.RemoveDisk(context.WithoutCancel(ctx), v.DiskID)
		return VolumeInfo{}, err
	}
	return VolumeInfo{Volume: v, Path: d.Path, UsedBy: []VolumeUser{}}, nil
}

// Volumes lists the volumes, by name, with the boxes that mount them.
func (r *Runtime) Volumes(ctx context.Context) ([]VolumeInfo, error) {
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	var out []VolumeInfo
	err := r.store.View(ctx, func(tx *state.Tx) error {
		vs, err := tx.Volumes()
		if err != nil {
			return err
		}
		boxes, err := tx.Boxes()
		if err != nil {
			return err
		}
		for _, v := range vs {
			out = append(out, VolumeInfo{Volume: v, UsedBy: volumeUsers(boxes, v.Name)})
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// InspectVolume returns one volume, its disk file and its users.
func (r *Runtime) InspectVolume(ctx context.Context, name string) (VolumeInfo, error) {
	if err := r.checkOpen(); err != nil {
		return VolumeInfo{}, err
	}
	var vi VolumeInfo
	err := r.store.View(ctx, func(tx *state.Tx) error {
		v, err := tx.Volume(name)
		if err != nil {
			return volumeNotFound(name, err)
		}
		boxes, err := tx.Boxes()
		if err != nil {
			return err
		}
		vi = VolumeInfo{Volume: v, UsedBy: volumeUsers(boxes, name)}
		return nil
	})
	if err != nil {
		return VolumeInfo{}, err
	}
	if disks, err := r.plugins.Disks(ctx); err == nil {
		if d, err := disks.GetDisk(ctx, vi.DiskID); err == nil {
			vi.Path = d.Path
		}
	}
	return vi, nil
}

func volumeNotFound(name string, err error) error {
	if errors.Is(err, model.ErrNotFound) {
		return fmt.Errorf("volume %s does not exist (boxctl volume ls lists them): %w", name, ErrNotFound)
	}
	return err
}

func volumeUsers(boxes []*model.Box, name string) []VolumeUser {
	users := []VolumeUser{}
	for _, b := range boxes {
		for _, m := range b.Config.Mounts {
			if m.Kind == model.MountVolume && m.Source == name {
				users = append(users, VolumeUser{Box: b.Name, ID: b.ID, Target: m.Target, ReadOnly: m.ReadOnly, Running: b.Status.Active()})
			}
		}
	}
	sort.Slice(users, func(i, j int) bool { return users[i].Box < users[j].Box })
	return users
}

// RemoveVolume removes a volume and its disk. A volume some box mounts is
// refused unless force; with force those boxes lose the mount (it is taken
// out of their configuration; a running box keeps the open disk until it
// stops) and are returned.
func (r *Runtime) RemoveVolume(ctx context.Context, name string, force bool) ([]VolumeUser, error) {
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	var v model.Volume
	var lost []VolumeUser
	err := r.store.Update(ctx, func(tx *state.Tx) error {
		var err error
		if v, err = tx.Volume(name); err != nil {
			return volumeNotFound(name, err)
		}
		boxes, err := tx.Boxes()
		if err != nil {
			return err
		}
		lost = volumeUsers(boxes, name)
		if len(lost) > 0 && !force {
			var names []string
			for _, u := range lost {
				names = append(names, u.Box)
			}
			return fmt.Errorf("volume rm %s: the volume is used by %s; remove those boxes first, or use -f to remove it anyway (they lose it): %w", name, strings.Join(names, ", "), ErrInvalidState)
		}
		for _, b := range boxes {
			kept := b.Config.Mounts[:0:0]
			for _, m := range b.Config.Mounts {
				if !(m.Kind == model.MountVolume && m.Source == name) {
					kept = append(kept, m)
				}
			}
			if len(kept) != len(b.Config.Mounts) {
				b.Config.Mounts = kept
				if err := tx.PutBox(b); err != nil {
					return err
				}
			}
		}
		return tx.DeleteVolume(name)
	})
	if err != nil {
		return nil, err
	}
	disks, err := r.plugins.Disks(ctx)
	if err != nil {
		return lost, fmt.Errorf("volume rm %s: the record is gone but its disk %s is left: storage plugin: %w", name, v.DiskID, err)
	}
	if err := disks.RemoveDisk(ctx, v.DiskID); err != nil && !errors.Is(err, sdk.ErrNotFound) {
		return lost, fmt.Errorf("volume rm %s: the record is gone but its disk %s is left: %w", name, v.DiskID, err)
	}
	return lost, nil
}
