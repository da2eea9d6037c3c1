package core

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/core/state"
	"github.com/boxctl/boxctl/sdk"
)

// Boot templates: the first boot of an image (for one VMM, kernel, vCPUs,
// memory and disk size) is captured right after its guest agent answers,
// before any user command ran; a later new box of that image starts from
// the capture (its memory, and an O(1) clone of its writable disk)
// instead of booting a kernel. The VMM's StateInputs (kernel, initramfs,
// hypervisor version, ...) are checked at every restore: a template whose
// inputs changed is dropped and the box boots cold, making a new one.

// templatePlan is what a start does about boot templates.
type templatePlan struct {
	key string
	// template is being restored (restore set) ...
	template *model.Template
	restore  *restoreFrom
	// ... or make says to capture one once the box runs.
	make bool
}

// pendingTemplate marks a box a template is being captured from; recovery
// removes what a dead capture left (the disk and state file it names).
const pendingTemplate = "template:"

// templateKey identifies the template a new box of image digest with
// config c would start from: everything about the VM that the VMM's
// StateInputs do not cover.
func (r *Runtime) templateKey(digest, vmm string, c model.BoxConfig) string {
	// A box without network boots another VM (no NIC, no address in its
	// boot arguments); user-mode boxes keep the keys they always had.
	network := ""
	if c.NetworkMode == model.NetworkModeNone {
		network = model.NetworkModeNone
	}
	b, _ := json.Marshal(struct {
		Digest, VMM, Storage string
		CPUs                 int
		MemoryMiB, DiskSize  uint64
		Network              string `json:",omitempty"`
	}{digest, vmm, r.cfg.Storage, c.CPUs, c.MemoryMiB, c.DiskSize, network})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// planTemplate decides whether box b's start uses a boot template: only a
// new box (never started, not a clone) of a VMM and storage plugin that can
// capture one, with templates on in the config. When a template exists,
// the box's writable disk is made as a clone of the template's.
func (r *Runtime) planTemplate(ctx context.Context, b *model.Box) templatePlan {
	if !r.cfg.Defaults.BootTemplates || b.Status != model.StatusConfigured || b.DiskCreated || b.ClonedFrom != "" || b.Pending != "" || hasMounts(b) {
		return templatePlan{}
	}
	if !r.canCapture(ctx) {
		return templatePlan{}
	}
	img, err := r.resolveImage(ctx, b.Config.Image, b.Config.Platform, nil)
	if err != nil {
		return templatePlan{} // the start reports it
	}
	vmm, err := r.vmmNameOf(ctx, b)
	if err != nil {
		return templatePlan{} // the start reports it
	}
	key := r.templateKey(img.Digest, vmm, b.Config)
	var t model.Template
	err = r.store.View(ctx, func(tx *state.Tx) error {
		t, err = tx.Template(key)
		return err
	})
	if err != nil {
		return templatePlan{key: key, make: true}
	}
	if err := r.diskFromTemplate(ctx, b, vmm, t); err != nil {
		r.log.Warn(fmt.Sprintf("the boot template of %s could not be used (%v); booting cold", b.Config.Image, err))
		r.dropTemplate(ctx, &t)
		return templatePlan{key: key, make: true}
	}
	return templatePlan{key: key, template: &t, restore: &restoreFrom{state: t.State, what: "the boot template of " + b.Config.Image}}
}

// canCapture reports whether the plugins configured can make and restore
// boot templates.
func (r *Runtime) canCapture(ctx context.Context) bool {
	vi, err := r.plugins.Info(ctx, sdk.RoleVMM)
	if err != nil || !vi.Capabilities.MemorySnapshot || !vi.Capabilities.DiskSwitch {
		return false
	}
	si, err := r.plugins.Info(ctx, sdk.RoleDisks)
	return err == nil && si.Capabilities.Clone && si.Capabilities.CloneO1
}

// diskFromTemplate makes box b's writable disk a clone of template t's.
func (r *Runtime) diskFromTemplate(ctx context.Context, b *model.Box, vmm string, t model.Template) error {
	// The checksum is verified while the VM starts (launch).
	if err := r.checkState(t.State, vmm); err != nil {
		return err
	}
	snaps, err := r.plugins.Snapshots(ctx)
	if err != nil {
		return fmt.Errorf("storage plugin: %w", err)
	}
	cloner, ok := snaps.(sdk.Cloner)
	if !ok {
		return fmt.Errorf("the storage plugin cannot clone disks: %w", ErrUnsupported)
	}
	if _, err := cloner.Clone(ctx, sdk.CloneRequest{ID: t.DiskID, NewID: b.DiskID}); err != nil {
		return fmt.Errorf("clone the template's disk: %w", err)
	}
	return r.store.Update(ctx, func(tx *state.Tx) error {
		cur, err := tx.Box(b.ID)
		if err != nil {
			return err
		}
		cur.DiskCreated = true
		return tx.PutBox(cur)
	})
}

// makeTemplate captures running box id (just booted, no user command run
// yet) as the boot template key. A template another process made meanwhile
// wins; this one is discarded.
func (r *Runtime) makeTemplate(ctx context.Context, id, key string) error {
	b, err := r.reload(ctx, id)
	if err != nil {
		return err
	}
	var exists bool
	_ = r.store.View(ctx, func(tx *state.Tx) error {
		_, err := tx.Template(key)
		exists = err == nil
		return nil
	})
	if exists {
		return nil
	}
	diskID := "tmpl-" + key[:16] + "-" + newID()[:8]
	if err := r.setPending(ctx, b.ID, pendingTemplate+diskID); err != nil {
		return err
	}
	defer r.clearPending(ctx, b.ID)
	start := time.Now()
	c, err := r.captureRunning(ctx, b, "template", []string{diskID}, r.paths.templateDir(), diskID)
	if err != nil {
		return err
	}
	t := model.Template{
		Key: key, Image: b.Config.Image, ImageDigest: b.ImageDigest, CreatedAt: time.Now().UTC(),
		State: c.state, DiskID: diskID, CPUs: b.Config.CPUs, MemoryMiB: b.Config.MemoryMiB, DiskSize: b.Config.DiskSize,
	}
	err = r.store.Update(ctx, func(tx *state.Tx) error {
		if _, err := tx.Template(key); err == nil {
			return errTemplateExists
		}
		if err := tx.PutTemplate(t); err != nil {
			return err
		}
		// The template keeps its image: image removal refuses, prune
		// removes the template first.
		return tx.Ref(imageBase(t.ImageDigest), templateRef(key))
	})
	if err != nil {
		r.discardTemplateFiles(context.WithoutCancel(ctx), t)
		if errors.Is(err, errTemplateExists) {
			return nil
		}
		return err
	}
	r.log.Debug("boot template made", "image", t.Image, "key", key, "size", c.state.Size, "paused", c.paused.Paused, "took", time.Since(start))
	return nil
}

var errTemplateExists = errors.New("a boot template with this key exists")

// templateRef is how a template is named among an image's references.
func templateRef(key string) string { return "template:" + key }

// dropTemplate removes template t (its record, disk and state file).
func (r *Runtime) dropTemplate(ctx context.Context, t *model.Template) {
	if t == nil {
		return
	}
	err := r.store.Update(ctx, func(tx *state.Tx) error {
		cur, err := tx.Template(t.Key)
		if err != nil || cur.DiskID != t.DiskID {
			return nil // gone, or replaced by another process's
		}
		if _, err := tx.Unref(imageBase(t.ImageDigest), templateRef(t.Key)); err != nil {
			return err
		}
		return tx.DeleteTemplate(t.Key)
	})
	if err != nil {
		r.log.Warn("drop a boot template", "key", t.Key, "error", err)
		return
	}
	r.discardTemplateFiles(ctx, *t)
}

func (r *Runtime) discardTemplateFiles(ctx context.Context, t model.Template) {
	r.removeStateFile(t.State)
	r.removeDisks(ctx, []string{t.DiskID})
}

// recoverTemplate removes what a capture that died left of template disk
// diskID: the disk, and its state file if it was written.
func (r *Runtime) recoverTemplate(ctx context.Context, b *model.Box) {
	diskID := strings.TrimPrefix(b.Pending, pendingTemplate)
	var recorded bool
	_ = r.store.View(ctx, func(tx *state.Tx) error {
		ts, err := tx.Templates()
		for _, t := range ts {
			recorded = recorded || t.DiskID == diskID
		}
		return err
	})
	if !recorded {
		r.removeDisks(ctx, []string{diskID})
		// The state file is named after the disk (stateFileName), the
		// VMM's temporary one after that: ".NAME.RANDOM.tmp".
		matches, _ := filepath.Glob(filepath.Join(r.paths.templateDir(), diskID+".*"))
		tmps, _ := filepath.Glob(filepath.Join(r.paths.templateDir(), "."+diskID+".*"))
		matches = append(matches, tmps...)
		for _, m := range matches {
			_ = os.Remove(m)
		}
	}
	if err := r.resyncLiveDisk(ctx, b); err != nil {
		r.log.Warn("recovery: move a box's VM onto its disk's top file", "box", b.ID, "error", err)
	}
	r.clearPending(ctx, b.ID)
}

// TemplateInfo describes a boot template.
type TemplateInfo struct {
	Image       string    `json:"image"`
	ImageDigest string    `json:"image_digest"`
	CreatedAt   time.Time `json:"created_at"`
	Size        int64     `json:"size"`
	CPUs        int       `json:"cpus"`
	MemoryMiB   uint64    `json:"memory_mib"`
	DiskSize    uint64    `json:"disk_size"`
	Inputs      string    `json:"inputs"`
	// DiskID is the storage plugin's disk holding the template's disk state.
	DiskID string `json:"disk_id"`
}

// Templates lists the boot templates.
func (r *Runtime) Templates(ctx context.Context) ([]TemplateInfo, error) {
	var ts []model.Template
	err := r.store.View(ctx, func(tx *state.Tx) error {
		var err error
		ts, err = tx.Templates()
		return err
	})
	out := make([]TemplateInfo, 0, len(ts))
	for _, t := range ts {
		out = append(out, TemplateInfo{Image: t.Image, ImageDigest: t.ImageDigest, CreatedAt: t.CreatedAt, Size: t.State.Size,
			CPUs: t.CPUs, MemoryMiB: t.MemoryMiB, DiskSize: t.DiskSize, Inputs: describeInputs(t.State.Inputs), DiskID: t.DiskID})
	}
	return out, err
}

// PruneTemplates removes every boot template (of image digest, or all when
// digest is ""); it returns how many.
func (r *Runtime) PruneTemplates(ctx context.Context, digest string) (int, error) {
	var ts []model.Template
	err := r.store.View(ctx, func(tx *state.Tx) error {
		var err error
		ts, err = tx.Templates()
		return err
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for i := range ts {
		if digest == "" || ts[i].ImageDigest == digest {
			r.dropTemplate(ctx, &ts[i])
			n++
		}
	}
	return n, nil
}
