package core

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/state"
	"github.com/boxctl/boxctl/internal/namecheck"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/guestboot"
)

// BoxOptions are what Create takes: a name (optional; one is generated)
// and the box configuration (zero values take the config file's defaults).
type BoxOptions struct {
	Name   string
	Config model.BoxConfig
}

// Box is a handle on one box. It holds only the ID: every method reads the
// current record, so handles stay valid across processes.
type Box struct {
	rt *Runtime
	id string
}

// ID is the box's full ID.
func (b *Box) ID() string { return b.id }

// Info returns the box's current record.
func (b *Box) Info(ctx context.Context) (*model.Box, error) { return b.rt.GetInfo(ctx, b.id) }

// Start starts the box's VM; see Runtime.Start.
func (b *Box) Start(ctx context.Context, opts ...StartOption) error {
	return b.rt.Start(ctx, b.id, opts...)
}

// Stop stops the box's VM; see Runtime.Stop.
func (b *Box) Stop(ctx context.Context, timeout time.Duration) error {
	return b.rt.Stop(ctx, b.id, timeout)
}

func (r *Runtime) newBox(opts BoxOptions) (*model.Box, error) {
	c := opts.Config
	if strings.TrimSpace(c.Image) == "" {
		return nil, fmt.Errorf("create box: no image given: %w", ErrInvalidArgument)
	}
	id := newID()
	name := opts.Name
	if name == "" {
		name = "box-" + id[:8]
	}
	if !namecheck.BoxName(name) {
		return nil, fmt.Errorf("create box: invalid name %q: use 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit: %w", name, ErrInvalidArgument)
	}
	if c.Hostname != "" {
		if err := guestboot.ValidHostname(c.Hostname); err != nil {
			return nil, fmt.Errorf("create box: hostname %q: %v: %w", c.Hostname, err, ErrInvalidArgument)
		}
	}
	d := r.cfg.Defaults
	if c.CPUs == 0 {
		c.CPUs = d.CPUs
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = d.MemoryMiB
	}
	if c.DiskSize == 0 {
		c.DiskSize = d.DiskSize
	}
	if !c.AutoRemove {
		c.AutoRemove = d.AutoRemove
	}
	if !c.Detach {
		c.Detach = d.Detach
	}
	if !c.AllowHostLoopback {
		c.AllowHostLoopback = d.AllowHostLoopback
	}
	if err := boxNetwork(&c, d); err != nil {
		return nil, err
	}
	if c.CPUs < 0 || c.CPUs > 256 {
		return nil, fmt.Errorf("create box: cpus %d out of range 1-256: %w", c.CPUs, ErrInvalidArgument)
	}
	if c.MemoryMiB < config.MinMemory>>20 {
		return nil, fmt.Errorf("create box: memory %dMiB is below the %s minimum: %w", c.MemoryMiB, config.FormatSize(config.MinMemory), ErrInvalidArgument)
	}
	if err := config.CheckDiskSize(c.DiskSize); err != nil {
		return nil, fmt.Errorf("create box: %v: %w", err, ErrInvalidArgument)
	}
	for _, e := range c.Env {
		if !strings.Contains(e, "=") || strings.HasPrefix(e, "=") {
			return nil, fmt.Errorf("create box: environment entry %q is not KEY=VALUE: %w", e, ErrInvalidArgument)
		}
	}
	seen := map[string]bool{}
	for _, p := range c.Ports {
		if p.HostPort == 0 || p.GuestPort == 0 || (p.Protocol != "" && p.Protocol != "tcp" && p.Protocol != "udp") {
			return nil, fmt.Errorf("create box: port mapping %+v: ports must be 1-65535 and the protocol tcp or udp: %w", p, ErrInvalidArgument)
		}
		key := fmt.Sprintf("%s:%d/%s", p.HostIP, p.HostPort, orString(p.Protocol, "tcp"))
		if seen[key] {
			return nil, fmt.Errorf("create box: host port %s is published twice: %w", key, ErrInvalidArgument)
		}
		seen[key] = true
	}
	if err := checkMounts(c.Mounts); err != nil {
		return nil, fmt.Errorf("create box: %w", err)
	}
	if h := c.Health; h != nil {
		if len(h.Cmd) == 0 || h.Interval <= 0 || h.Timeout <= 0 || h.Retries < 1 {
			return nil, fmt.Errorf("create box: health check needs a command, a positive interval and timeout, and at least 1 retry: %w", ErrInvalidArgument)
		}
	}
	return &model.Box{
		ID:        id,
		Name:      name,
		CreatedAt: time.Now().UTC(),
		Config:    c,
		Status:    model.StatusConfigured,
		DiskID:    id,
	}, nil
}

// boxNetwork fills in the network mode and allow-list from the defaults
// and checks them: a box without network can neither publish ports nor
// have an allow-list (a default allow-list applies to user-mode boxes only).
func boxNetwork(c *model.BoxConfig, d config.BoxDefaults) error {
	explicitAllow := len(c.AllowNet) > 0
	if c.NetworkMode == "" {
		c.NetworkMode = orString(d.Network, model.NetworkModeUser)
	}
	switch c.NetworkMode {
	case model.NetworkModeUser:
		if !explicitAllow && len(d.AllowNet) > 0 {
			c.AllowNet = append([]string(nil), d.AllowNet...)
		}
	case model.NetworkModeNone:
		if explicitAllow {
			return fmt.Errorf("create box: --allow-net needs a network, but the network mode is %q: drop --allow-net or use --network user: %w", c.NetworkMode, ErrInvalidArgument)
		}
		if len(c.Ports) > 0 {
			return fmt.Errorf("create box: publishing a port (-p) needs a network, but the network mode is %q: drop -p or use --network user: %w", c.NetworkMode, ErrInvalidArgument)
		}
	default:
		return fmt.Errorf("create box: network mode %q: use %q (outbound through the host) or %q (no network device): %w", c.NetworkMode, model.NetworkModeUser, model.NetworkModeNone, ErrInvalidArgument)
	}
	for _, a := range c.AllowNet {
		if _, err := sdk.ParseNetworkAllow(a); err != nil {
			return fmt.Errorf("create box: --allow-net: %v: %w", err, ErrInvalidArgument)
		}
	}
	return nil
}

// nameShadowsID refuses a name that is another box's ID, or its short ID
// or more of it: names resolve before ID prefixes, so that ID would start
// naming the new box. Checked in the transaction that inserts the box.
func nameShadowsID(tx *state.Tx, op, name string) error {
	if id := tx.NameShadowsID(name); id != "" {
		return fmt.Errorf("%s: the name %q is the ID of box %s (or its start): a box cannot be named like another box's ID; choose another name: %w", op, name, shortID(id), ErrInvalidArgument)
	}
	return nil
}

// insertBox persists b and creates its directory in one write transaction,
// so recovery in another process never sees the directory without its
// record.
func (r *Runtime) insertBox(tx *state.Tx, b *model.Box) error {
	if err := checkVolumesExist(tx, b.Config); err != nil {
		return fmt.Errorf("create box %s: %w", b.Name, err)
	}
	if err := tx.PutBox(b); err != nil {
		return err
	}
	if err := tx.AddCounter(CounterBoxesCreated, 1); err != nil {
		return err
	}
	if err := os.Mkdir(r.paths.boxDir(b.ID), 0o700); err != nil {
		return fmt.Errorf("create box directory: %w", err)
	}
	lock := r.paths.lockPath(b.ID)
	if err := os.MkdirAll(filepath.Dir(lock), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(lock, nil, 0o600); err != nil {
		return fmt.Errorf("create box lock: %w", err)
	}
	return nil
}

// discardNew removes what insertBox made when its transaction failed.
func (r *Runtime) discardNew(id string) {
	_ = os.RemoveAll(r.paths.boxDir(id))
	_ = os.Remove(r.paths.lockPath(id))
}

// Create persists a new box with status Configured. Its VM starts on Start
// (or the first exec). A name in use is ErrAlreadyExists.
func (r *Runtime) Create(ctx context.Context, opts BoxOptions) (*Box, error) {
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	b, err := r.newBox(opts)
	if err != nil {
		return nil, err
	}
	if err := r.checkStartable(ctx, b); err != nil {
		return nil, err
	}
	err = r.store.Update(ctx, func(tx *state.Tx) error {
		if owner := tx.NameTaken(b.Name); owner != "" {
			return fmt.Errorf("create box: the name %q is already in use by box %s; choose another name or remove that box: %w", b.Name, shortID(owner), ErrAlreadyExists)
		}
		if err := nameShadowsID(tx, "create box", b.Name); err != nil {
			return err
		}
		return r.insertBox(tx, b)
	})
	if err != nil {
		r.discardNew(b.ID)
		return nil, err
	}
	return &Box{rt: r, id: b.ID}, nil
}

// GetOrCreate returns the box named opts.Name if it exists (ignoring the
// other options) or creates it; created says which. Concurrent callers with
// one name, in any processes, get the same single box.
func (r *Runtime) GetOrCreate(ctx context.Context, opts BoxOptions) (box *Box, created bool, err error) {
	if err := r.checkOpen(); err != nil {
		return nil, false, err
	}
	if opts.Name == "" {
		return nil, false, fmt.Errorf("get or create: a name is required: %w", ErrInvalidArgument)
	}
	b, err := r.newBox(opts)
	if err != nil {
		return nil, false, err
	}
	// An existing box is returned as it is; only a box about to be
	// created is checked.
	var existing string
	if err := r.store.View(ctx, func(tx *state.Tx) error {
		existing = tx.NameTaken(b.Name)
		return nil
	}); err != nil {
		return nil, false, err
	}
	if existing != "" {
		return &Box{rt: r, id: existing}, false, nil
	}
	if err := r.checkStartable(ctx, b); err != nil {
		return nil, false, err
	}
	err = r.store.Update(ctx, func(tx *state.Tx) error {
		if owner := tx.NameTaken(b.Name); owner != "" {
			existing = owner
			return nil
		}
		if err := nameShadowsID(tx, "get or create", b.Name); err != nil {
			return err
		}
		return r.insertBox(tx, b)
	})
	if err != nil {
		r.discardNew(b.ID)
		return nil, false, err
	}
	if existing != "" {
		return &Box{rt: r, id: existing}, false, nil
	}
	return &Box{rt: r, id: b.ID}, true, nil
}

// checkVMMHost refuses a VMM that says it cannot run VMs on this host (a
// missing library, no usable KVM). vmm = "auto" chose a usable one already
// (by the same CheckHost), so it is not asked again; a VMM without
// host-check is trusted until its first start.
func (r *Runtime) checkVMMHost(ctx context.Context) error {
	if r.cfg.VMM == config.AutoVMM {
		return nil
	}
	info, err := r.plugins.Info(ctx, sdk.RoleVMM)
	if err != nil || !info.Capabilities.HostCheck {
		return nil
	}
	vmm, err := r.plugins.VMM(ctx)
	if err != nil {
		return nil
	}
	rep, err := vmm.CheckHost(ctx)
	if err != nil {
		return fmt.Errorf("vmm %q: check the host: %w", info.Name, err)
	}
	if !rep.Usable {
		return fmt.Errorf("the %s VMM cannot run VMs on this host: %s (`boxctl info` shows every VMM's verdict; set vmm = \"auto\" or another VMM): %w", info.Name, rep.Reason, ErrUnsupported)
	}
	return nil
}

// checkStartable refuses, before a box is recorded, what would make every
// start of it fail: a VMM or image plugin that is missing, does not start
// or rejects its config block, and an image reference or platform the
// image plugin refuses (it checks syntax and local layouts and archives,
// without pulling or using the network). It costs one start of each of the
// two plugins, side by side; a later start in the same process reuses them.
func (r *Runtime) checkStartable(ctx context.Context, b *model.Box) error {
	if err := r.plugins.Ready(ctx, sdk.RoleVMM, sdk.RoleImages); err != nil {
		return fmt.Errorf("create box: the box could never start: %w", err)
	}
	if err := r.checkVMMHost(ctx); err != nil {
		return fmt.Errorf("create box: the box could never start: %w", err)
	}
	req, err := pullRequest(b.Config.Image, b.Config.Platform)
	if err != nil {
		return fmt.Errorf("create box: %w", err)
	}
	if _, ok := r.resolved.get(b.Config.Image + "\x00" + b.Config.Platform); ok {
		return nil // resolved in this process already: the reference is good
	}
	images, err := r.plugins.Images(ctx)
	if err != nil {
		return fmt.Errorf("create box: image plugin: %w", err)
	}
	if info, err := r.plugins.Info(ctx, sdk.RoleImages); err != nil || !info.Capabilities.CheckReferences {
		return nil // plugins without the check are trusted until the first start
	}
	_, err = images.CheckReference(ctx, req)
	image := b.Config.Image
	if b.Config.Platform != "" {
		image += " (platform " + b.Config.Platform + ")"
	}
	switch {
	case err == nil || errors.Is(err, sdk.ErrUnsupported):
		// Plugins without the check are trusted until the first start.
		return nil
	case errors.Is(err, sdk.ErrInvalidArgument):
		return &imageError{msg: fmt.Sprintf("create box: image %s cannot be used: %v; correct the image reference or platform", image, err), kind: ErrInvalidArgument}
	case errors.Is(err, sdk.ErrNotFound):
		return &imageError{msg: fmt.Sprintf("create box: image %s: %v", image, err), kind: ErrNotFound}
	}
	return fmt.Errorf("create box: check image %s: %w", image, err)
}

// imageError is the image plugin's refusal of a box's image as one of
// core's error kinds; the plugin's message says what is wrong and what to
// do, so the kind is not repeated in the text.
type imageError struct {
	msg  string
	kind error
}

func (e *imageError) Error() string { return e.msg }
func (e *imageError) Unwrap() error { return e.kind }

// Get returns a handle on the box with this ID, name or unambiguous ID
// prefix.
func (r *Runtime) Get(ctx context.Context, ref string) (*Box, error) {
	info, err := r.GetInfo(ctx, ref)
	if err != nil {
		return nil, err
	}
	return &Box{rt: r, id: info.ID}, nil
}

// GetInfo returns the record of the box with this ID, name or unambiguous
// ID prefix.
func (r *Runtime) GetInfo(ctx context.Context, ref string) (*model.Box, error) {
	var b *model.Box
	err := r.store.View(ctx, func(tx *state.Tx) error {
		var err error
		b, err = tx.ResolveBox(ref)
		return err
	})
	return b, err
}

// Exists reports whether a box with this ID, name or unambiguous prefix
// exists.
func (r *Runtime) Exists(ctx context.Context, ref string) (bool, error) {
	_, err := r.GetInfo(ctx, ref)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// List returns every box, newest first.
func (r *Runtime) List(ctx context.Context) ([]*model.Box, error) {
	var boxes []*model.Box
	err := r.store.View(ctx, func(tx *state.Tx) error {
		var err error
		boxes, err = tx.Boxes()
		return err
	})
	return boxes, err
}

// ListActive returns the boxes that may have a VM (starting, running,
// paused, stopping) and the suspended ones, newest first, without reading
// the others.
func (r *Runtime) ListActive(ctx context.Context) ([]*model.Box, error) {
	var boxes []*model.Box
	err := r.store.View(ctx, func(tx *state.Tx) error {
		all, err := tx.AttentionBoxes()
		for _, b := range all {
			if b.Status.Active() || b.Status == model.StatusSuspended {
				boxes = append(boxes, b)
			}
		}
		return err
	})
	state.SortNewestFirst(boxes)
	return boxes, err
}

// RemoveOptions tune Remove.
type RemoveOptions struct {
	// Force removes an active box (killing its VM) and a box that clones
	// depend on.
	Force bool
}

// Remove deletes a box: its VM (with Force), its disk and snapshots, its
// references to bases, its directory, record and lock. An active box
// without Force is ErrInvalidState; so is a box other boxes were cloned
// from.
func (r *Runtime) Remove(ctx context.Context, ref string, opts RemoveOptions) error {
	b, lock, err := r.lockAndLoad(ctx, ref)
	if err != nil {
		return err
	}
	defer lock.Release() // removeLocked deletes the lock file with the box
	var clones []string
	err = r.store.View(ctx, func(tx *state.Tx) error {
		all, err := tx.Boxes()
		for _, o := range all {
			if o.ClonedFrom == b.ID {
				clones = append(clones, o.Name)
			}
		}
		return err
	})
	if err != nil {
		return err
	}
	if b.Status.Active() {
		if !opts.Force {
			return fmt.Errorf("box %s (%s) is %s: stop it first or remove it with force: %w", b.Name, shortID(b.ID), b.Status, ErrInvalidState)
		}
		if _, err := r.stopLocked(ctx, b, 0); err != nil {
			return fmt.Errorf("remove %s: kill its VM: %w", b.Name, err)
		}
	}
	if b.Status == model.StatusSuspended && !opts.Force {
		return fmt.Errorf("box %s (%s) is suspended: its processes are saved and resume at the next start; remove it with force to drop them: %w", b.Name, shortID(b.ID), ErrInvalidState)
	}
	if len(clones) > 0 && !opts.Force {
		return fmt.Errorf("box %s (%s) has clones that were made from its disk (%s): remove them first or remove it with force: %w", b.Name, shortID(b.ID), strings.Join(clones, ", "), ErrInvalidState)
	}
	return r.removeLocked(ctx, b.ID)
}

// removeLocked deletes a stopped box; the caller holds its lock. It marks
// the record first, so recovery finishes the job if this process dies.
func (r *Runtime) removeLocked(ctx context.Context, id string) error {
	var b *model.Box
	err := r.store.Update(ctx, func(tx *state.Tx) error {
		var err error
		if b, err = tx.Box(id); err != nil {
			return err
		}
		b.Pending = "removing"
		return tx.PutBox(b)
	})
	if err != nil {
		return err
	}
	if err := r.releaseStorage(ctx, b); err != nil {
		return fmt.Errorf("remove %s: %w", b.Name, err)
	}
	if err := os.RemoveAll(r.paths.boxDir(id)); err != nil {
		return fmt.Errorf("remove %s: delete its directory: %w", b.Name, err)
	}
	// The lock file goes in the transaction that deletes the record: no
	// other process can see the record without its lock file (it would
	// make a new one and think it held the lock), and a crash leaves either
	// both or a record marked "removing" that recovery finishes. The caller
	// still holds the lock through its descriptor.
	return r.store.Update(ctx, func(tx *state.Tx) error {
		if err := os.Remove(r.paths.lockPath(id)); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("remove %s: delete its lock: %w", b.Name, err)
		}
		err := tx.DeleteBox(id)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		return err
	})
}

// releaseStorage removes the box's writable disk (and its snapshots) from
// the storage plugin. Boxes that never started have no disk; the storage
// plugin is not started for them.
func (r *Runtime) releaseStorage(ctx context.Context, b *model.Box) error {
	if err := r.releaseCheckpoints(ctx, b); err != nil {
		return err
	}
	if b.DiskID == "" || !b.DiskCreated {
		return nil
	}
	disks, err := r.plugins.Disks(ctx)
	if err != nil {
		return fmt.Errorf("storage plugin: %w", err)
	}
	if err := disks.RemoveDisk(ctx, b.DiskID); err != nil {
		return fmt.Errorf("remove disk %s: %w", b.DiskID, err)
	}
	return nil
}

// Clone creates one new box with the source box's configuration and a
// copy of its writable disk (see CloneBoxes), named opts.Name.
func (r *Runtime) Clone(ctx context.Context, srcRef string, opts BoxOptions) (*Box, error) {
	boxes, err := r.CloneBoxes(ctx, srcRef, CloneOptions{Name: opts.Name})
	if err != nil {
		return nil, err
	}
	return boxes[0], nil
}

// boxNetworkSpec is the VM's network for a box's config. Boxes created
// before network modes existed have none recorded and get the user-mode
// network they always had.
func boxNetworkSpec(c model.BoxConfig, n *sdk.NetworkSpec) error {
	if c.NetworkMode == model.NetworkModeNone {
		*n = sdk.NetworkSpec{Mode: sdk.NetworkNone}
		return nil
	}
	*n = sdk.NetworkSpec{Mode: sdk.NetworkUser, AllowHostLoopback: c.AllowHostLoopback}
	for _, p := range c.Ports {
		n.Ports = append(n.Ports, sdk.PortForward{
			Protocol: orString(p.Protocol, "tcp"), HostIP: p.HostIP, HostPort: p.HostPort, GuestPort: p.GuestPort,
		})
	}
	for _, s := range c.AllowNet {
		a, err := sdk.ParseNetworkAllow(s)
		if err != nil {
			// Checked at create; a record edited since must not start open.
			return fmt.Errorf("the box's allow-list: %v: %w", err, ErrInvalidArgument)
		}
		n.Allow = append(n.Allow, a)
	}
	return nil
}
