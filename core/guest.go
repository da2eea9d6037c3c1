package core

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/monitor"
	"github.com/boxctl/boxctl/core/state"
	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/sdk"
)

// imageBase is the base key under which boxes reference an image's root
// disk in the state store.
func imageBase(digest string) string { return "image:" + digest }

// prepareGuest readies the image's read-only root disk and the box's
// writable disk, and adds them to the VM spec. A box that already ran keeps
// the image it was created from (by digest) and its disk.
func (r *Runtime) prepareGuest(ctx context.Context, b *model.Box, spec *sdk.VMSpec) error {
	images, err := r.plugins.Images(ctx)
	if err != nil {
		return fmt.Errorf("image plugin: %w", err)
	}
	var img sdk.Image
	if b.ImageDigest != "" {
		img, err = images.GetImage(ctx, b.ImageDigest)
		if errors.Is(err, sdk.ErrNotFound) {
			return fmt.Errorf("image %s (%s), which this box runs, is no longer cached: pull %s again: %w", b.Config.Image, b.ImageDigest, b.Config.Image, err)
		}
	} else {
		img, err = r.resolveImage(ctx, b.Config.Image, b.Config.Platform, nil)
	}
	if err != nil {
		return err
	}
	root, err := images.RootDisk(ctx, img.Digest)
	if err != nil {
		return fmt.Errorf("root disk of %s: %w", b.Config.Image, err)
	}
	disks, err := r.plugins.Disks(ctx)
	if err != nil {
		return fmt.Errorf("storage plugin: %w", err)
	}
	var disk sdk.Disk
	if b.DiskCreated {
		disk, err = disks.GetDisk(ctx, b.DiskID)
		if errors.Is(err, sdk.ErrNotFound) {
			return fmt.Errorf("the writable disk of box %s is missing from the storage plugin (%w); its data is lost: remove the box", b.Name, err)
		}
	} else {
		disk, err = disks.CreateDisk(ctx, sdk.CreateDiskRequest{ID: b.DiskID, Size: b.Config.DiskSize, Filesystem: "ext4"})
		if errors.Is(err, sdk.ErrAlreadyExists) {
			// A start that died after creating the disk: adopt it.
			disk, err = disks.GetDisk(ctx, b.DiskID)
		}
	}
	if err != nil {
		return fmt.Errorf("writable disk: %w", err)
	}
	cfg := img.Config
	err = r.store.Update(ctx, func(tx *state.Tx) error {
		cur, err := tx.Box(b.ID)
		if err != nil {
			return err
		}
		cur.DiskCreated = true
		cur.ImageDigest = img.Digest
		cur.Image = &model.ImageConfig{
			Entrypoint: cfg.Entrypoint, Cmd: cfg.Cmd, Env: cfg.Env,
			WorkingDir: cfg.WorkingDir, User: cfg.User, StopSignal: cfg.StopSignal,
		}
		if err := tx.PutBox(cur); err != nil {
			return err
		}
		return tx.Ref(imageBase(img.Digest), b.ID)
	})
	if err != nil {
		return err
	}
	// The VMM opens exactly these files (resolved, checked to lie in the
	// store of the plugin that made them) and no backing-file name found
	// inside them.
	rootDisk, err := r.checkedDisk(b, r.cfg.Images, "image root disk", root.Path, orString(root.Format, "raw"), nil)
	if err != nil {
		return err
	}
	rootDisk.Role, rootDisk.ReadOnly = sdk.DiskRoleImage, true
	dataDisk, err := r.writableSpec(b, disk)
	if err != nil {
		return err
	}
	spec.Disks = []sdk.DiskSpec{rootDisk, dataDisk}
	return nil
}

// writableSpec is the VM's view of box b's writable disk, as the storage
// plugin reports it (checked: see checkedDisk).
func (r *Runtime) writableSpec(b *model.Box, disk sdk.Disk) (sdk.DiskSpec, error) {
	d, err := r.checkedDisk(b, r.cfg.Storage, "writable disk", disk.Path, disk.Format, disk.BackingChain)
	d.Role = sdk.DiskRoleWritable
	return d, err
}

// writableDiskSpec asks the storage plugin for box b's writable disk now.
func (r *Runtime) writableDiskSpec(ctx context.Context, b *model.Box) (sdk.DiskSpec, error) {
	disks, err := r.plugins.Disks(ctx)
	if err != nil {
		return sdk.DiskSpec{}, fmt.Errorf("storage plugin: %w", err)
	}
	disk, err := disks.GetDisk(ctx, b.DiskID)
	if err != nil {
		return sdk.DiskSpec{}, fmt.Errorf("writable disk of %s: %w", b.Name, err)
	}
	return r.writableSpec(b, disk)
}

// checkedDisk resolves a disk file and its backing chain, as the plugin
// named plugin reported them, and refuses any file that is not a regular
// file inside that plugin's store (<home>/plugins-data/<plugin>): a disk
// file's header can name any file on the host, /etc/shadow or another
// user's disk, and a root boxctl would hand it to the VM.
func (r *Runtime) checkedDisk(b *model.Box, plugin, what, path, format string, chain []sdk.BackingFile) (sdk.DiskSpec, error) {
	store := filepath.Join(r.cfg.Home, "plugins-data", plugin)
	realStore, err := filepath.EvalSymlinks(store)
	if err != nil {
		return sdk.DiskSpec{}, fmt.Errorf("box %s: the %s plugin's store %s: %w", b.Name, plugin, store, err)
	}
	check := func(file, role string) (string, error) {
		if !filepath.IsAbs(file) {
			return "", fmt.Errorf("box %s: %s %q is not an absolute path (the %s plugin reported it): %w", b.Name, role, file, plugin, ErrInvalidState)
		}
		real, err := filepath.EvalSymlinks(file)
		if err != nil {
			return "", fmt.Errorf("box %s: %s %s: %w; remove the box (boxctl rm %s) if its disk is lost", b.Name, role, file, err, b.Name)
		}
		if !strings.HasPrefix(real, realStore+string(filepath.Separator)) {
			return "", fmt.Errorf("box %s: %s %s resolves to %s, outside the %s plugin's store %s: refusing to start, because a disk file may name any host file; "+
				"the box's disk was tampered with: restore it, or remove the box (boxctl rm %s): %w", b.Name, role, file, real, plugin, realStore, b.Name, ErrInvalidState)
		}
		st, err := os.Lstat(real)
		if err != nil {
			return "", fmt.Errorf("box %s: %s %s: %w", b.Name, role, real, err)
		}
		if !st.Mode().IsRegular() {
			return "", fmt.Errorf("box %s: %s %s is not a regular file (%s): the %s plugin's store was tampered with; remove the box (boxctl rm %s): %w", b.Name, role, real, st.Mode().Type(), plugin, b.Name, ErrInvalidState)
		}
		return real, nil
	}
	top, err := check(path, what)
	if err != nil {
		return sdk.DiskSpec{}, err
	}
	d := sdk.DiskSpec{Path: top, Format: format}
	above := top
	for _, c := range chain {
		real, err := check(c.Path, "backing file of "+above)
		if err != nil {
			return sdk.DiskSpec{}, err
		}
		d.BackingChain = append(d.BackingChain, sdk.ChainFile{Path: real, Format: c.Format})
		above = real
	}
	return d, nil
}

func orString(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// EnsureImage returns the cached image for ref (and platform, "" for the
// host's), pulling it when it is not cached; progress may be nil. The
// runtime remembers the answer, so a start in the same process does not
// ask the image plugin again.
func (r *Runtime) EnsureImage(ctx context.Context, ref, platform string, progress func(sdk.PullEvent)) (sdk.Image, error) {
	if err := r.checkOpen(); err != nil {
		return sdk.Image{}, err
	}
	return r.resolveImage(ctx, ref, platform, progress)
}

// resolveImage returns the cached image for ref, pulling it when it is not
// cached. progress may be nil.
func (r *Runtime) resolveImage(ctx context.Context, ref, platform string, progress func(sdk.PullEvent)) (sdk.Image, error) {
	key := ref + "\x00" + platform
	if img, ok := r.resolved.get(key); ok {
		return img, nil
	}
	images, err := r.plugins.Images(ctx)
	if err != nil {
		return sdk.Image{}, fmt.Errorf("image plugin: %w", err)
	}
	if platform == "" {
		img, err := images.GetImage(ctx, ref)
		if err == nil {
			r.resolved.put(key, img)
			return img, nil
		}
		if !errors.Is(err, sdk.ErrNotFound) {
			return sdk.Image{}, err
		}
	}
	img, err := r.pull(ctx, images, ref, platform, progress)
	if err == nil {
		r.resolved.put(key, img)
	}
	return img, err
}

// imageMemo remembers which image a reference resolved to, for the life of
// one runtime: a command that resolves an image and then starts a box asks
// the image plugin once. Removing or pruning images forgets everything.
type imageMemo struct {
	mu sync.Mutex
	m  map[string]sdk.Image
}

func (m *imageMemo) get(key string) (sdk.Image, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	img, ok := m.m[key]
	return img, ok
}

func (m *imageMemo) put(key string, img sdk.Image) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.m == nil {
		m.m = map[string]sdk.Image{}
	}
	m.m[key] = img
}

func (m *imageMemo) forget() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.m = nil
}

func (r *Runtime) pull(ctx context.Context, images sdk.ImageSource, ref, platform string, progress func(sdk.PullEvent)) (sdk.Image, error) {
	req, err := pullRequest(ref, platform)
	if err != nil {
		return sdk.Image{}, err
	}
	img, err := images.Pull(ctx, req, progress)
	if err != nil {
		return sdk.Image{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	return img, nil
}

// pullRequest asks for ref on platform ("" for the host's).
func pullRequest(ref, platform string) (sdk.PullRequest, error) {
	req := sdk.PullRequest{Reference: ref}
	if platform != "" {
		p, err := sdk.ParsePlatform(platform)
		if err != nil {
			return sdk.PullRequest{}, err
		}
		req.Platform = &p
	}
	return req, nil
}

// Pull pulls an image into the cache, reporting progress events.
func (r *Runtime) Pull(ctx context.Context, ref, platform string, progress func(sdk.PullEvent)) (sdk.Image, error) {
	if err := r.checkOpen(); err != nil {
		return sdk.Image{}, err
	}
	images, err := r.plugins.Images(ctx)
	if err != nil {
		return sdk.Image{}, fmt.Errorf("image plugin: %w", err)
	}
	return r.pull(ctx, images, ref, platform, progress)
}

// ImageInfo is a cached image and the boxes using it.
type ImageInfo struct {
	sdk.Image
	UsedBy []string
}

// Images lists the cached images, newest first, with the boxes using each.
func (r *Runtime) Images(ctx context.Context) ([]ImageInfo, error) {
	images, err := r.plugins.Images(ctx)
	if err != nil {
		return nil, fmt.Errorf("image plugin: %w", err)
	}
	list, err := images.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]ImageInfo, len(list))
	err = r.store.View(ctx, func(tx *state.Tx) error {
		for i, img := range list {
			out[i] = ImageInfo{Image: img, UsedBy: tx.Refs(imageBase(img.Digest))}
		}
		return nil
	})
	return out, err
}

// RemoveImage removes a cached image (by reference or digest). It is
// refused while a box uses the image, unless force.
func (r *Runtime) RemoveImage(ctx context.Context, ref string, force bool) (sdk.Removed, error) {
	images, err := r.plugins.Images(ctx)
	if err != nil {
		return sdk.Removed{}, fmt.Errorf("image plugin: %w", err)
	}
	img, err := images.GetImage(ctx, ref)
	if err != nil {
		return sdk.Removed{}, err
	}
	var users []string
	if err := r.store.View(ctx, func(tx *state.Tx) error {
		for _, id := range tx.Refs(imageBase(img.Digest)) {
			if b, err := tx.Box(id); err == nil {
				users = append(users, b.Name)
			}
		}
		return nil
	}); err != nil {
		return sdk.Removed{}, err
	}
	r.resolved.forget()
	if len(users) > 0 && !force {
		return sdk.Removed{}, fmt.Errorf("image %s is used by box(es) %s: remove them first, or force: %w", ref, strings.Join(users, ", "), ErrInvalidState)
	}
	removed, err := images.RemoveImage(ctx, ref)
	if err == nil {
		// Its boot templates would restore a root disk that is gone.
		if _, terr := r.PruneTemplates(ctx, img.Digest); terr != nil {
			r.log.Warn("remove the boot templates of a removed image", "image", ref, "error", terr)
		}
	}
	return removed, err
}

// PruneImages removes cached images no box uses (only untagged ones unless
// all).
func (r *Runtime) PruneImages(ctx context.Context, all bool) (sdk.Removed, error) {
	images, err := r.plugins.Images(ctx)
	if err != nil {
		return sdk.Removed{}, fmt.Errorf("image plugin: %w", err)
	}
	// Boot templates go with a prune: they are a cache, made again by the
	// next first boot of an image.
	if _, err := r.PruneTemplates(ctx, ""); err != nil {
		return sdk.Removed{}, fmt.Errorf("remove boot templates: %w", err)
	}
	list, err := images.ListImages(ctx)
	if err != nil {
		return sdk.Removed{}, err
	}
	var keep []string
	if err := r.store.View(ctx, func(tx *state.Tx) error {
		for _, img := range list {
			if len(tx.Refs(imageBase(img.Digest))) > 0 {
				keep = append(keep, img.Digest)
			}
		}
		return nil
	}); err != nil {
		return sdk.Removed{}, err
	}
	r.resolved.forget()
	return images.Prune(ctx, sdk.PruneRequest{Keep: keep, All: all})
}

// guestAgent adapts agentclient to what the box monitor needs.
type guestAgent struct{}

// GuestAgent returns the monitor's view of the guest agent (readiness,
// clean shutdown and thaw over the agent socket).
func GuestAgent() monitor.Agent { return guestAgent{} }

func (guestAgent) Thaw(ctx context.Context, socket string) error {
	c, err := agentclient.Dial(ctx, socket)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Thaw(ctx)
	return err
}

func (guestAgent) WaitReady(ctx context.Context, socket string, id *monitor.Identity) error {
	c, err := agentclient.Dial(ctx, socket)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err = c.WaitReady(ctx); err != nil || id == nil {
		return err
	}
	// Fresh host time and entropy: no two boxes restored from one state
	// are twins.
	if err := c.Reidentify(ctx, agentclient.Identity{BoxID: id.BoxID, Hostname: id.Hostname}); err != nil {
		return fmt.Errorf("give the restored guest its identity: %w", err)
	}
	return nil
}

func (guestAgent) Shutdown(ctx context.Context, socket string) error {
	c, err := agentclient.Dial(ctx, socket)
	if err != nil {
		return err
	}
	defer c.Close()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return c.Shutdown(sctx, 0)
}

// HealthProbe runs a health check command through the guest agent: healthy
// when it exits 0 within timeout. The box monitor calls it.
func HealthProbe(ctx context.Context, socket string, argv []string, timeout time.Duration) (bool, string) {
	c, err := agentclient.Dial(ctx, socket)
	if err != nil {
		return false, err.Error()
	}
	defer c.Close()
	var out strings.Builder
	pctx, cancel := context.WithTimeout(ctx, timeout+5*time.Second)
	defer cancel()
	res, err := c.Exec(pctx, agentclient.ExecRequest{Argv: argv, Timeout: timeout}, nil, &out, &out, nil, nil)
	if err != nil {
		return false, err.Error()
	}
	if res.TimedOut {
		return false, fmt.Sprintf("health check timed out after %s", timeout)
	}
	return res.ExitCode == 0, out.String()
}
