package plugin

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/imagestore"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/ref"
	"github.com/boxctl/boxctl/sdk"
)

// Pull implements sdk.ImageSource. It always resolves the reference at its
// source (a digest reference already cached excepted) and downloads only
// what the cache lacks; whether to pull at all is the core's decision.
func (p *Plugin) Pull(ctx context.Context, req sdk.PullRequest, progress func(sdk.PullEvent)) (sdk.Image, error) {
	st, err := p.current()
	if err != nil {
		return sdk.Image{}, err
	}
	platform, err := platformString(req.Platform)
	if err != nil {
		return sdk.Image{}, err
	}
	var (
		mu     sync.Mutex
		cached int
		layers = map[string]bool{}
	)
	send := func(ev sdk.PullEvent) {
		if progress == nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		progress(ev)
	}
	opts := imagestore.PullOptions{
		Platform: platform,
		Status: func(line string) {
			p.log.Info(line)
			send(sdk.PullEvent{Status: line})
		},
		Progress: func(ev imagestore.ProgressEvent) {
			mu.Lock()
			layers[ev.Layer] = true
			if ev.State == imagestore.LayerCached {
				cached++
			}
			mu.Unlock()
			send(sdk.PullEvent{Layer: layerProgress(ev)})
		},
	}
	img, err := st.Pull(ctx, req.Reference, opts)
	if err != nil {
		p.log.Debug("pull failed", "reference", req.Reference, "error", err)
		return sdk.Image{}, err
	}
	if len(layers) > 0 {
		mu.Lock()
		line := fmt.Sprintf("pulled %s (%s): %s, %d already cached", img.Ref, img.Digest, plural(len(img.Layers), "layer"), cached)
		mu.Unlock()
		opts.Status(line)
	}
	return imageToSDK(img), nil
}

// CheckReference implements sdk.ReferenceChecker: the reference's syntax,
// the platform, and that a local layout (with its tag and platform) or
// archive exists, all without network access.
func (p *Plugin) CheckReference(ctx context.Context, req sdk.PullRequest) (string, error) {
	st, err := p.current()
	if err != nil {
		return "", err
	}
	platform, err := platformString(req.Platform)
	if err != nil {
		return "", err
	}
	canonical, err := st.CheckReference(ctx, req.Reference, platform)
	if err != nil {
		p.log.Debug("reference check failed", "reference", req.Reference, "error", err)
		return "", err
	}
	return canonical, nil
}

// platformString turns a requested platform into the store's
// "os/arch[/variant]"; nil or empty means the configured default.
func platformString(pl *sdk.Platform) (string, error) {
	if pl == nil || *pl == (sdk.Platform{}) {
		return "", nil
	}
	if pl.OS == "" || pl.Architecture == "" {
		return "", fmt.Errorf("%w: platform os=%q architecture=%q variant=%q: both os and architecture are needed (e.g. linux/arm64)",
			sdk.ErrInvalidArgument, pl.OS, pl.Architecture, pl.Variant)
	}
	return pl.String(), nil
}

// GetImage implements sdk.ImageSource.
func (p *Plugin) GetImage(_ context.Context, image string) (sdk.Image, error) {
	st, err := p.current()
	if err != nil {
		return sdk.Image{}, err
	}
	img, _, err := find(st, image)
	if err != nil {
		return sdk.Image{}, err
	}
	return imageToSDK(img), nil
}

// RootDisk implements sdk.ImageSource.
func (p *Plugin) RootDisk(ctx context.Context, image string) (sdk.RootDisk, error) {
	st, err := p.current()
	if err != nil {
		return sdk.RootDisk{}, err
	}
	img, _, err := find(st, image)
	if err != nil {
		return sdk.RootDisk{}, err
	}
	rd, err := st.RootDisk(ctx, img.Digest)
	if err != nil {
		return sdk.RootDisk{}, err
	}
	if rd.Built {
		p.log.Info("built root disk", "image", img.Digest, "path", rd.Path, "size", rd.Size)
	}
	return sdk.RootDisk{
		Path:       rd.Path,
		Format:     "raw",
		Filesystem: "ext4",
		Size:       uint64(max(rd.Size, 0)),
		Image:      imageToSDK(rd.Image),
	}, nil
}

// ListImages implements sdk.ImageSource: newest pull first.
func (p *Plugin) ListImages(context.Context) ([]sdk.Image, error) {
	st, err := p.current()
	if err != nil {
		return nil, err
	}
	imgs, err := st.List()
	if err != nil {
		return nil, err
	}
	out := make([]sdk.Image, len(imgs))
	for i, img := range imgs {
		out[i] = imageToSDK(img)
	}
	return out, nil
}

// RemoveImage implements sdk.ImageSource. By reference it removes that
// reference from the image it names (the image goes once no reference is
// left); by digest it removes the image and every reference to it.
func (p *Plugin) RemoveImage(ctx context.Context, image string) (sdk.Removed, error) {
	st, err := p.current()
	if err != nil {
		return sdk.Removed{}, err
	}
	img, byRef, err := find(st, image)
	if err != nil {
		return sdk.Removed{}, err
	}
	var rep imagestore.PruneReport
	if byRef != "" && slices.Contains(img.Refs, byRef) {
		rep, err = st.Untag(ctx, byRef, img.Digest)
	} else {
		// A digest, or a digest reference that was never recorded as
		// such (the image was pulled by tag): the content itself.
		rep, err = st.Remove(ctx, img.Digest)
	}
	if err != nil {
		return sdk.Removed{}, err
	}
	p.log.Info("removed", "image", image, "digest", img.Digest, "removed", rep.Images, "freed", rep.BytesFreed)
	return removedToSDK(rep), nil
}

// Prune implements sdk.Pruner: it removes every image not in keep that
// has no reference (or every image not in keep with all), then blobs,
// indexes and root disks nothing uses.
func (p *Plugin) Prune(ctx context.Context, req sdk.PruneRequest) (sdk.Removed, error) {
	st, err := p.current()
	if err != nil {
		return sdk.Removed{}, err
	}
	keep := map[string]bool{}
	for _, k := range req.Keep {
		d, err := fullDigest(k)
		if err != nil {
			return sdk.Removed{}, fmt.Errorf("%w: keep: %v", sdk.ErrInvalidArgument, err)
		}
		keep[d] = true
	}
	rep, err := st.PruneImages(ctx, func(img imagestore.Image) bool {
		return keep[img.Digest] || (!req.All && len(img.Refs) > 0)
	})
	if err != nil {
		return sdk.Removed{}, err
	}
	p.log.Info("pruned", "removed", rep.Images, "blobs", rep.Blobs, "freed", rep.BytesFreed)
	return removedToSDK(rep), nil
}

// ExportImage implements sdk.ImageExporter: the cached image as an OCI
// layout directory at dest (see imagestore.ExportLayout). image is a
// digest or anything find accepts.
func (p *Plugin) ExportImage(ctx context.Context, image, dest string) error {
	st, err := p.current()
	if err != nil {
		return err
	}
	img, _, err := find(st, image)
	if err != nil {
		return err
	}
	if err := st.ExportLayout(ctx, img.Digest, dest); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %v", sdk.ErrAlreadyExists, err)
		}
		return err
	}
	p.log.Info("exported image", "digest", img.Digest, "layout", dest)
	return nil
}

const digestPrefix = "sha256:"

// find resolves what a user typed to a cached image, without network
// access: "sha256:<hex or prefix>" and a full 64-hex string are digests; any
// other string is first a reference (looked up for the default platform,
// else the one cached image carrying it), then, if it is hex, a digest
// prefix. byRef is the canonical reference when it was found as one.
func find(st *imagestore.Store, image string) (img imagestore.Image, byRef string, err error) {
	s := strings.TrimSpace(image)
	if s == "" {
		return imagestore.Image{}, "", fmt.Errorf("%w: empty image name: give a reference (alpine, ghcr.io/org/app:tag) or a digest (sha256:...)", sdk.ErrInvalidArgument)
	}
	if hx, ok := strings.CutPrefix(s, digestPrefix); ok {
		img, err := byDigestPrefix(st, hx, s)
		return img, "", err
	}
	if isHex(s) && len(s) == 64 {
		img, err := byDigestPrefix(st, s, s)
		return img, "", err
	}
	img, err = st.Lookup(s, "")
	if err == nil {
		return img, img.Ref, nil
	}
	if !errors.Is(err, imagestore.ErrNotFound) && !errors.Is(err, imagestore.ErrBadReference) {
		return imagestore.Image{}, "", err
	}
	if errors.Is(err, imagestore.ErrNotFound) {
		if other, canonical, ok, ferr := onlyImageWithRef(st, s); ferr != nil {
			return imagestore.Image{}, "", ferr
		} else if ok {
			return other, canonical, nil
		}
	}
	if isHex(s) {
		img, perr := byDigestPrefix(st, s, s)
		if perr == nil || !errors.Is(perr, imagestore.ErrNotFound) {
			return img, "", perr
		}
		name := s
		if r, rerr := ref.Parse(s); rerr == nil {
			name = r.String()
		}
		return imagestore.Image{}, "", fmt.Errorf("%w: no cached image is named %s or has a digest starting with %s", imagestore.ErrNotFound, name, s)
	}
	return imagestore.Image{}, "", err
}

// onlyImageWithRef finds the cached image carrying reference when it was
// pulled for a platform other than the default: unambiguous only if one
// image carries it.
func onlyImageWithRef(st *imagestore.Store, reference string) (imagestore.Image, string, bool, error) {
	r, err := ref.Parse(reference)
	if err != nil {
		return imagestore.Image{}, "", false, nil
	}
	canonical := r.String()
	imgs, err := st.List()
	if err != nil {
		return imagestore.Image{}, "", false, err
	}
	var hits []imagestore.Image
	for _, img := range imgs {
		if slices.Contains(img.Refs, canonical) {
			hits = append(hits, img)
		}
	}
	if len(hits) != 1 {
		return imagestore.Image{}, "", false, nil
	}
	hits[0].Ref = canonical
	return hits[0], canonical, true, nil
}

// byDigestPrefix finds the one cached image whose manifest digest starts
// with hx (lowercase hex, 1 to 64 digits).
func byDigestPrefix(st *imagestore.Store, hx, typed string) (imagestore.Image, error) {
	if hx == "" || len(hx) > 64 || !isHex(hx) {
		return imagestore.Image{}, fmt.Errorf("%w: %q is not an image digest or digest prefix (want sha256:<hex digits>, lower case)", sdk.ErrInvalidArgument, typed)
	}
	if len(hx) == 64 {
		return st.Image(digestPrefix + hx)
	}
	imgs, err := st.List()
	if err != nil {
		return imagestore.Image{}, err
	}
	var hits []imagestore.Image
	for _, img := range imgs {
		if strings.HasPrefix(strings.TrimPrefix(img.Digest, digestPrefix), hx) {
			hits = append(hits, img)
		}
	}
	switch len(hits) {
	case 0:
		return imagestore.Image{}, fmt.Errorf("%w: no cached image has a digest starting with %s", imagestore.ErrNotFound, typed)
	case 1:
		return hits[0], nil
	}
	ds := make([]string, len(hits))
	for i, h := range hits {
		ds[i] = h.Digest
	}
	sort.Strings(ds)
	return imagestore.Image{}, fmt.Errorf("%w: digest prefix %s is ambiguous: it matches %s; give more digits",
		sdk.ErrInvalidArgument, typed, strings.Join(ds, ", "))
}

// fullDigest normalizes a complete digest, "sha256:<64 hex>" or "<64 hex>".
func fullDigest(s string) (string, error) {
	hx := strings.TrimPrefix(strings.TrimSpace(s), digestPrefix)
	if len(hx) != 64 || !isHex(hx) {
		return "", fmt.Errorf("%q is not an image digest (want sha256:<64 hex digits>)", s)
	}
	return digestPrefix + hx, nil
}

func isHex(s string) bool {
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return s != ""
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
