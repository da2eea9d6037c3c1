package core

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/state"
	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/sdk"
	pluginv1 "github.com/boxctl/boxctl/sdk/proto/v1"
)

// imageBase is the base key under which boxes reference an image's root
// disk in the state store.
func imageBase(digest string) string { return "image:" + digest }

// prepareGuest readies the image's read-only root disk and the box's
// writable disk, and adds them to the VM spec. A box that already ran keeps
// the image it was created from (by digest) and its disk.
func (r *Runtime) prepareGuest(ctx context.Context, b *model.Box, spec *pluginv1.VMSpec) error {
	images, err := r.plugins.Images(ctx)
	if err != nil {
		return fmt.Errorf("image plugin: %w", err)
	}
	var img *pluginv1.Image
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
	root, err := images.RootDisk(ctx, img.GetDigest())
	if err != nil {
		return fmt.Errorf("root disk of %s: %w", b.Config.Image, err)
	}
	disks, err := r.plugins.Disks(ctx)
	if err != nil {
		return fmt.Errorf("storage plugin: %w", err)
	}
	var disk *pluginv1.DiskInfo
	if b.DiskCreated {
		disk, err = disks.GetDisk(ctx, b.DiskID)
		if errors.Is(err, sdk.ErrNotFound) {
			return fmt.Errorf("the writable disk of box %s is missing from the storage plugin (%w); its data is lost: remove the box", b.Name, err)
		}
	} else {
		disk, err = disks.CreateDisk(ctx, &pluginv1.CreateDiskRequest{DiskId: b.DiskID, SizeBytes: b.Config.DiskSize, Filesystem: "ext4"})
		if errors.Is(err, sdk.ErrAlreadyExists) {
			// A start that died after creating the disk: adopt it.
			disk, err = disks.GetDisk(ctx, b.DiskID)
		}
	}
	if err != nil {
		return fmt.Errorf("writable disk: %w", err)
	}
	cfg := img.GetConfig()
	err = r.store.Update(ctx, func(tx *state.Tx) error {
		cur, err := tx.Box(b.ID)
		if err != nil {
			return err
		}
		cur.DiskCreated = true
		cur.ImageDigest = img.GetDigest()
		cur.Image = &model.ImageConfig{
			Entrypoint: cfg.GetEntrypoint(), Cmd: cfg.GetCmd(), Env: cfg.GetEnv(),
			WorkingDir: cfg.GetWorkingDir(), User: cfg.GetUser(), StopSignal: cfg.GetStopSignal(),
		}
		if err := tx.PutBox(cur); err != nil {
			return err
		}
		return tx.Ref(imageBase(img.GetDigest()), b.ID)
	})
	if err != nil {
		return err
	}
	spec.Disks = []*pluginv1.DiskSpec{
		{Path: root.GetPath(), Format: orString(root.GetFormat(), "raw"), Role: pluginv1.DiskRole_DISK_ROLE_IMAGE, ReadOnly: true},
		{Path: disk.GetPath(), Format: disk.GetFormat(), Role: pluginv1.DiskRole_DISK_ROLE_WRITABLE},
	}
	return nil
}

func orString(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// resolveImage returns the cached image for ref, pulling it when it is not
// cached. progress may be nil.
func (r *Runtime) resolveImage(ctx context.Context, ref, platform string, progress func(*pluginv1.PullEvent)) (*pluginv1.Image, error) {
	images, err := r.plugins.Images(ctx)
	if err != nil {
		return nil, fmt.Errorf("image plugin: %w", err)
	}
	if platform == "" {
		img, err := images.GetImage(ctx, ref)
		if err == nil {
			return img, nil
		}
		if !errors.Is(err, sdk.ErrNotFound) {
			return nil, err
		}
	}
	return r.pull(ctx, images, ref, platform, progress)
}

func (r *Runtime) pull(ctx context.Context, images sdk.ImageSource, ref, platform string, progress func(*pluginv1.PullEvent)) (*pluginv1.Image, error) {
	req := &pluginv1.PullRequest{Reference: ref}
	if platform != "" {
		p, err := parsePlatform(platform)
		if err != nil {
			return nil, err
		}
		req.Platform = p
	}
	img, err := images.Pull(ctx, req, progress)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	return img, nil
}

func parsePlatform(s string) (*pluginv1.Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return nil, fmt.Errorf("platform %q: use os/arch[/variant], e.g. linux/arm64: %w", s, ErrInvalidArgument)
	}
	p := &pluginv1.Platform{Os: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

// Pull pulls an image into the cache, reporting progress events.
func (r *Runtime) Pull(ctx context.Context, ref, platform string, progress func(*pluginv1.PullEvent)) (*pluginv1.Image, error) {
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	images, err := r.plugins.Images(ctx)
	if err != nil {
		return nil, fmt.Errorf("image plugin: %w", err)
	}
	return r.pull(ctx, images, ref, platform, progress)
}

// ImageInfo is a cached image and the boxes using it.
type ImageInfo struct {
	*pluginv1.Image
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
			out[i] = ImageInfo{Image: img, UsedBy: tx.Refs(imageBase(img.GetDigest()))}
		}
		return nil
	})
	return out, err
}

// RemoveImage removes a cached image (by reference or digest). It is
// refused while a box uses the image, unless force.
func (r *Runtime) RemoveImage(ctx context.Context, ref string, force bool) (*pluginv1.RemoveImageResponse, error) {
	images, err := r.plugins.Images(ctx)
	if err != nil {
		return nil, fmt.Errorf("image plugin: %w", err)
	}
	img, err := images.GetImage(ctx, ref)
	if err != nil {
		return nil, err
	}
	var users []string
	if err := r.store.View(ctx, func(tx *state.Tx) error {
		for _, id := range tx.Refs(imageBase(img.GetDigest())) {
			if b, err := tx.Box(id); err == nil {
				users = append(users, b.Name)
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if len(users) > 0 && !force {
		return nil, fmt.Errorf("image %s is used by box(es) %s: remove them first, or force: %w", ref, strings.Join(users, ", "), ErrInvalidState)
	}
	return images.RemoveImage(ctx, ref)
}

// PruneImages removes cached images no box uses (only untagged ones unless
// all).
func (r *Runtime) PruneImages(ctx context.Context, all bool) (*pluginv1.PruneResponse, error) {
	images, err := r.plugins.Images(ctx)
	if err != nil {
		return nil, fmt.Errorf("image plugin: %w", err)
	}
	list, err := images.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	var keep []string
	if err := r.store.View(ctx, func(tx *state.Tx) error {
		for _, img := range list {
			if len(tx.Refs(imageBase(img.GetDigest()))) > 0 {
				keep = append(keep, img.GetDigest())
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return images.Prune(ctx, &pluginv1.PruneRequest{Keep: keep, All: all})
}

// guestAgent adapts agentclient to what the box monitor needs.
type guestAgent struct{}

// GuestAgent returns the monitor's view of the guest agent (readiness and
// clean shutdown over the agent socket).
func GuestAgent() interface {
	WaitReady(ctx context.Context, socket string) error
	Shutdown(ctx context.Context, socket string) error
} {
	return guestAgent{}
}

func (guestAgent) WaitReady(ctx context.Context, socket string) error {
	c, err := agentclient.Dial(ctx, socket)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.WaitReady(ctx)
	return err
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
