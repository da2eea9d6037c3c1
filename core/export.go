package core

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/boxctl/boxctl/core/boxarchive"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/sdk"
)

// ExportOptions tune Export.
type ExportOptions struct {
	// WithSnapshots adds every snapshot of the box's disk (each flattened
	// on its own).
	WithSnapshots bool
	// WithImage adds the box's image, so that an import works where the
	// image cannot be pulled.
	WithImage bool
}

// Export writes a box archive (docs/box-archive.md) of a stopped box to w:
// its configuration, its flattened writable disk and, as asked, its
// snapshots and image. w need not seek. The box is locked while its disks
// are flattened and compressed, not while the archive streams out.
func (r *Runtime) Export(ctx context.Context, ref string, w io.Writer, opts ExportOptions) error {
	if err := r.checkOpen(); err != nil {
		return err
	}
	work, err := r.newWorkDir(ctx, "export")
	if err != nil {
		return err
	}
	defer work.remove()
	aw := boxarchive.NewWriter(work.dir)
	defer aw.Close()
	b, err := r.exportDisks(ctx, ref, work, aw, opts)
	if err != nil {
		return err
	}
	if opts.WithImage {
		if err := r.exportImage(ctx, b, work, aw); err != nil {
			return err
		}
	}
	start := time.Now()
	if err := aw.WriteTo(ctx, w, archiveBox(b), time.Now()); err != nil {
		return fmt.Errorf("export %s: %w", b.Name, err)
	}
	r.log.Debug("export: archive written", "box", b.ID, "members", len(aw.Members()), "write", time.Since(start))
	return nil
}

// exportDisks flattens the box's disk (and snapshots) into the archive
// under the box's lock, and returns the box as it was then.
func (r *Runtime) exportDisks(ctx context.Context, ref string, work *workDir, aw *boxarchive.Writer, opts ExportOptions) (*model.Box, error) {
	b, lock, err := r.lockAndLoad(ctx, ref)
	if err != nil {
		return nil, err
	}
	defer lock.Release()
	if b.Pending != "" {
		return nil, fmt.Errorf("export %s: the box is being %s; try again when that is done: %w", b.Name, pendingVerb(b.Pending), ErrInvalidState)
	}
	if !b.DiskCreated || b.ImageDigest == "" {
		return nil, fmt.Errorf("export %s: the box has never started, so it has no disk to export yet: start it once, or create the box anew where you need it: %w", b.Name, ErrInvalidState)
	}
	info, err := r.plugins.Info(ctx, sdk.RoleDisks)
	if err != nil {
		return nil, fmt.Errorf("storage plugin: %w", err)
	}
	if !info.Capabilities.Export {
		return nil, fmt.Errorf("export %s: the storage plugin %q cannot export disks: %w", b.Name, r.cfg.Storage, ErrUnsupported)
	}
	if opts.WithSnapshots && (!info.Capabilities.Snapshots || !info.Capabilities.SnapshotTransfer) {
		return nil, fmt.Errorf("export %s: the storage plugin %q cannot export snapshots: export without --with-snapshots: %w", b.Name, r.cfg.Storage, ErrUnsupported)
	}
	snapName, release, err := r.diskSource(ctx, b)
	if err != nil {
		return nil, err
	}
	defer release()
	disks, err := r.plugins.Disks(ctx)
	if err != nil {
		return nil, fmt.Errorf("storage plugin: %w", err)
	}
	flatten := func(name, snapshot string) (string, sdk.Disk, error) {
		dest := work.path(name)
		d, err := disks.Export(ctx, sdk.ExportRequest{ID: b.DiskID, Dest: dest, Format: boxarchive.FormatQcow2, Snapshot: snapshot})
		if err != nil {
			return "", sdk.Disk{}, err
		}
		if d.Format != boxarchive.FormatQcow2 || len(d.BackingChain) != 0 {
			return "", sdk.Disk{}, fmt.Errorf("the storage plugin exported a %s file with %d backing files, not a standalone qcow2", d.Format, len(d.BackingChain))
		}
		return dest, d, nil
	}
	start := time.Now()
	path, d, err := flatten("disk.qcow2", snapName)
	if err != nil {
		return nil, fmt.Errorf("export %s: flatten its disk: %w", b.Name, err)
	}
	flattened := time.Now()
	err = aw.AddDisk(ctx, path, d.VirtualSize)
	_ = os.Remove(path)
	if err != nil {
		return nil, fmt.Errorf("export %s: %w", b.Name, err)
	}
	r.log.Debug("export: disk flattened and compressed", "box", b.ID, "flatten", flattened.Sub(start), "compress", time.Since(flattened))
	if !opts.WithSnapshots {
		return b, nil
	}
	snaps, err := r.plugins.Snapshots(ctx)
	if err != nil {
		return nil, fmt.Errorf("storage plugin: %w", err)
	}
	list, err := snaps.ListSnapshots(ctx, b.DiskID)
	if err != nil {
		return nil, fmt.Errorf("export %s: list its snapshots: %w", b.Name, err)
	}
	for i, s := range list {
		if s.Name == snapName {
			continue // the export's own point in time, not the box's
		}
		path, d, err := flatten(fmt.Sprintf("snapshot-%d.qcow2", i), s.Name)
		if err != nil {
			return nil, fmt.Errorf("export %s: flatten snapshot %q: %w", b.Name, s.Name, err)
		}
		err = aw.AddSnapshot(ctx, path, d.VirtualSize, boxarchive.Snapshot{Name: s.Name, CreatedAt: s.CreatedAt})
		_ = os.Remove(path)
		if err != nil {
			return nil, fmt.Errorf("export %s: %w", b.Name, err)
		}
	}
	return b, nil
}

// diskSource says what the export reads the box's current disk from: ""
// for the disk itself, or the name of a snapshot made for the export. The
// caller holds the box's lock and calls release once the disk is
// flattened. A stopped box is read as it is; a running box keeps running:
// a snapshot is taken inside the quiesce bracket (constant time, the VM
// moves onto a new overlay), exported, and removed by release.
func (r *Runtime) diskSource(ctx context.Context, b *model.Box) (snapshotName string, release func(), err error) {
	if !b.Status.Active() {
		return "", func() {}, nil
	}
	info, err := r.plugins.Info(ctx, sdk.RoleDisks)
	if err != nil {
		return "", nil, fmt.Errorf("storage plugin: %w", err)
	}
	if !info.Capabilities.Snapshots || !info.Capabilities.SnapshotTransfer {
		return "", nil, fmt.Errorf("export %s while it runs: the storage plugin %q cannot export a snapshot, which a live export reads from: stop the box first: %w", b.Name, r.cfg.Storage, ErrUnsupported)
	}
	snaps, err := r.plugins.Snapshots(ctx)
	if err != nil {
		return "", nil, fmt.Errorf("storage plugin: %w", err)
	}
	name := "export-" + newID()[:12]
	sn, err := r.snapshotLocked(ctx, b, snaps, name)
	if err != nil {
		return "", nil, fmt.Errorf("export %s: %w", b.Name, err)
	}
	if sn.Quiesced != nil {
		r.log.Debug("export: live snapshot", "box", b.ID, "frozen", sn.Quiesced.Frozen, "paused", sn.Quiesced.Paused)
	}
	// Marked as a snapshot in the making until it is removed again, so
	// that recovery removes it should this process die meanwhile.
	remove := func() {
		ctx := context.WithoutCancel(ctx)
		if err := snaps.RemoveSnapshot(ctx, b.DiskID, name); err != nil {
			r.log.Warn("export: remove the export's snapshot", "box", b.ID, "snapshot", name, "error", err)
			return
		}
		if err := r.forgetSnapshot(ctx, b.ID, name); err != nil {
			r.log.Warn("export: forget the export's snapshot", "box", b.ID, "error", err)
		}
	}
	if err := r.setPending(ctx, b.ID, pendingSnapshot+name); err != nil {
		remove()
		return "", nil, err
	}
	return name, remove, nil
}

// exportImage adds the box's image, as the image plugin exports it.
func (r *Runtime) exportImage(ctx context.Context, b *model.Box, work *workDir, aw *boxarchive.Writer) error {
	info, err := r.plugins.Info(ctx, sdk.RoleImages)
	if err != nil {
		return fmt.Errorf("image plugin: %w", err)
	}
	if !info.Capabilities.ExportImage {
		return fmt.Errorf("export %s: the image plugin %q cannot export images: export without --with-image: %w", b.Name, r.cfg.Images, ErrUnsupported)
	}
	images, err := r.plugins.Images(ctx)
	if err != nil {
		return fmt.Errorf("image plugin: %w", err)
	}
	dir := work.path("image")
	if err := images.ExportImage(ctx, b.ImageDigest, dir); err != nil {
		return fmt.Errorf("export %s: its image %s (%s): %w", b.Name, b.Config.Image, b.ImageDigest, err)
	}
	err = aw.AddImage(ctx, dir, b.ImageDigest)
	_ = os.RemoveAll(dir)
	if err != nil {
		return fmt.Errorf("export %s: %w", b.Name, err)
	}
	return nil
}

// archiveBox is the box's configuration as the archive carries it. Run
// state (the VM, its monitor, health results, the sandbox user) stays
// behind.
func archiveBox(b *model.Box) boxarchive.Box {
	c := b.Config
	out := boxarchive.Box{
		ID: b.ID, Name: b.Name, CreatedAt: b.CreatedAt,
		Image: boxarchive.Image{Reference: c.Image, Digest: b.ImageDigest, Platform: c.Platform},
		CPUs:  c.CPUs, MemoryMiB: c.MemoryMiB, DiskSize: c.DiskSize,
		Entrypoint: c.Entrypoint, Cmd: c.Cmd, Env: c.Env, WorkingDir: c.WorkingDir, User: c.User,
		Labels: c.Labels, AutoRemove: c.AutoRemove, Detach: c.Detach, AllowHostLoopback: c.AllowHostLoopback,
		NetworkMode: c.NetworkMode, AllowNet: c.AllowNet, Hostname: c.Hostname,
	}
	for _, p := range c.Ports {
		out.Ports = append(out.Ports, boxarchive.Port{HostIP: p.HostIP, HostPort: p.HostPort, GuestPort: p.GuestPort, Protocol: p.Protocol})
	}
	if h := c.Health; h != nil {
		out.Health = &boxarchive.Health{Cmd: h.Cmd, IntervalNS: int64(h.Interval), TimeoutNS: int64(h.Timeout), Retries: h.Retries, StartPeriodNS: int64(h.StartPeriod)}
	}
	return out
}

// boxConfig is the configuration an archived box is imported with; Create's
// checks then apply to it as to any other.
func boxConfig(a boxarchive.Box) model.BoxConfig {
	c := model.BoxConfig{
		Image: a.Image.Reference, Platform: a.Image.Platform,
		CPUs: a.CPUs, MemoryMiB: a.MemoryMiB, DiskSize: a.DiskSize,
		Entrypoint: a.Entrypoint, Cmd: a.Cmd, Env: a.Env, WorkingDir: a.WorkingDir, User: a.User,
		Labels: a.Labels, AutoRemove: a.AutoRemove, Detach: a.Detach, AllowHostLoopback: a.AllowHostLoopback,
		NetworkMode: a.NetworkMode, AllowNet: a.AllowNet, Hostname: a.Hostname,
	}
	for _, p := range a.Ports {
		c.Ports = append(c.Ports, model.PortMapping{HostIP: p.HostIP, HostPort: p.HostPort, GuestPort: p.GuestPort, Protocol: p.Protocol})
	}
	if h := a.Health; h != nil {
		c.Health = &model.HealthCheck{Cmd: h.Cmd, Interval: time.Duration(h.IntervalNS), Timeout: time.Duration(h.TimeoutNS), Retries: h.Retries, StartPeriod: time.Duration(h.StartPeriodNS)}
	}
	return c
}

func pendingVerb(p string) string {
	switch p {
	case pendingImport:
		return "imported"
	case "cloning":
		return "cloned"
	case "removing":
		return "removed"
	}
	return p
}
