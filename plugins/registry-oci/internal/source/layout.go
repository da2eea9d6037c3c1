package source

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/blobstore"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/errdefs"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/ref"
)

const refNameAnnotation = "org.opencontainers.image.ref.name"

// Layout is a Source for an OCI image layout directory.
type Layout struct {
	ref ref.Reference
}

// NewLayout prepares a source for an oci-layout: reference.
func NewLayout(r ref.Reference) (*Layout, error) {
	b, err := readRegular(filepath.Join(r.Path, "oci-layout"), "the oci-layout marker of OCI layout "+r.Path, MaxManifestSize)
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(r.Path); errors.Is(serr, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: OCI layout directory %s does not exist: check the path, or write the layout there first (e.g. skopeo copy docker://IMAGE oci:%s)", errdefs.ErrNotFound, r.Path, r.Path)
		} else if serr != nil {
			return nil, fmt.Errorf("%w: OCI layout %s: %v", errdefs.ErrNotFound, r.Path, serr)
		}
		return nil, fmt.Errorf("%w: %s is not an OCI image layout (it has no oci-layout file)", errdefs.ErrBadImage, r.Path)
	}
	if err != nil {
		return nil, fmt.Errorf("read OCI layout %s: %w", r.Path, err)
	}
	var hdr struct {
		Version string `json:"imageLayoutVersion"`
	}
	if err := json.Unmarshal(b, &hdr); err != nil || hdr.Version == "" {
		return nil, fmt.Errorf("%w: %s/oci-layout is not a valid layout marker", errdefs.ErrBadImage, r.Path)
	}
	return &Layout{ref: r}, nil
}

// Describe implements Source.
func (l *Layout) Describe() string { return "OCI layout " + l.ref.Path }

// Close implements Source.
func (l *Layout) Close() error { return nil }

func (l *Layout) blobPath(d v1.Hash) string {
	return filepath.Join(l.ref.Path, "blobs", d.Algorithm, d.Hex)
}

func (l *Layout) blobName(d v1.Hash) string {
	return "blob " + d.String() + " of OCI layout " + l.ref.Path
}

func (l *Layout) readBlob(d v1.Hash) ([]byte, error) {
	if d.Algorithm != "sha256" {
		return nil, fmt.Errorf("%w: digest %s", errdefs.ErrUnsupported, d)
	}
	b, err := readRegular(l.blobPath(d), l.blobName(d), MaxManifestSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: blob %s is missing from OCI layout %s", errdefs.ErrBadImage, d, l.ref.Path)
	}
	if err != nil {
		return nil, err
	}
	if got := DigestOf(b); got != d {
		return nil, fmt.Errorf("%w: blob %s in OCI layout %s hashes to %s", errdefs.ErrDigestMismatch, d, l.ref.Path, got)
	}
	return b, nil
}

// Resolve implements Source.
func (l *Layout) Resolve(ctx context.Context, want v1.Platform) (*Resolved, error) {
	top, err := readRegular(filepath.Join(l.ref.Path, "index.json"), "the index.json of OCI layout "+l.ref.Path, MaxManifestSize)
	if errors.Is(err, errdefs.ErrBadImage) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("%w: OCI layout %s: %v", errdefs.ErrBadImage, l.ref.Path, err)
	}
	im, err := v1.ParseIndexManifest(bytes.NewReader(top))
	if err != nil {
		return nil, fmt.Errorf("%w: OCI layout %s: bad index.json: %v", errdefs.ErrBadImage, l.ref.Path, err)
	}
	var cands []v1.Descriptor
	var tags []string
	for _, d := range im.Manifests {
		if !(d.MediaType == "" || d.MediaType.IsImage() || d.MediaType.IsIndex()) {
			continue
		}
		tag := d.Annotations[refNameAnnotation]
		if tag != "" {
			tags = append(tags, tag)
		}
		switch {
		case l.ref.Digest != (v1.Hash{}):
			if d.Digest == l.ref.Digest {
				cands = append(cands, d)
			}
		case l.ref.Tag != "":
			if tag == l.ref.Tag {
				cands = append(cands, d)
			}
		default:
			cands = append(cands, d)
		}
	}
	if len(cands) == 0 && l.ref.Tag != "" {
		// Some tools record the full reference ("docker.io/library/x:1.0").
		for _, d := range im.Manifests {
			if strings.HasSuffix(d.Annotations[refNameAnnotation], ":"+l.ref.Tag) {
				cands = append(cands, d)
			}
		}
	}
	if len(cands) == 0 && l.ref.Digest != (v1.Hash{}) {
		// A digest not listed at the top (say, one platform of an index).
		if _, err := os.Stat(l.blobPath(l.ref.Digest)); err == nil {
			cands = append(cands, v1.Descriptor{Digest: l.ref.Digest})
		}
	}
	sort.Strings(tags)
	tagList := strings.Join(tags, ", ")
	if tagList == "" {
		tagList = "none"
	}
	switch {
	case len(cands) == 0 && l.ref.Tag != "":
		return nil, fmt.Errorf("%w: no image tagged %q in OCI layout %s (tags: %s)", errdefs.ErrNotFound, l.ref.Tag, l.ref.Path, tagList)
	case len(cands) == 0 && l.ref.Digest != (v1.Hash{}):
		return nil, fmt.Errorf("%w: no manifest %s in OCI layout %s", errdefs.ErrNotFound, l.ref.Digest, l.ref.Path)
	case len(cands) == 0:
		return nil, fmt.Errorf("%w: OCI layout %s holds no images", errdefs.ErrNotFound, l.ref.Path)
	case len(cands) > 1:
		// Several entries under one name are usually one per platform.
		var byPlat []v1.Descriptor
		for _, d := range cands {
			if d.Platform != nil && PlatformMatches(*d.Platform, want) {
				byPlat = append(byPlat, d)
			}
		}
		if len(byPlat) != 1 {
			return nil, fmt.Errorf("%w: OCI layout %s holds %d images; choose one with oci-layout:%s:TAG (tags: %s) or oci-layout:%s@DIGEST",
				errdefs.ErrBadReference, l.ref.Path, len(cands), l.ref.Path, tagList, l.ref.Path)
		}
		cands = byPlat
	}
	chosen := cands[0]
	body, err := l.readBlob(chosen.Digest)
	if err != nil {
		return nil, err
	}
	kind, err := Kind(body, chosen.MediaType)
	if err != nil {
		return nil, err
	}
	if !kind.IsIndex() {
		return &Resolved{Manifest: body, ManifestDigest: chosen.Digest, MediaType: kind, Platform: chosen.Platform}, nil
	}
	desc, err := SelectPlatform(body, want, l.ref.String())
	if err != nil {
		return nil, err
	}
	mbody, err := l.readBlob(desc.Digest)
	if err != nil {
		return nil, err
	}
	mkind, err := Kind(mbody, desc.MediaType)
	if err != nil {
		return nil, err
	}
	if mkind.IsIndex() {
		return nil, fmt.Errorf("%w: index entry %s is itself an index; nested indexes are not supported", errdefs.ErrUnsupported, desc.Digest)
	}
	return &Resolved{Manifest: mbody, ManifestDigest: desc.Digest, MediaType: mkind, Index: body, IndexDigest: chosen.Digest, Platform: desc.Platform}, nil
}

// Fetcher implements Source.
func (l *Layout) Fetcher(desc v1.Descriptor) blobstore.Fetcher {
	return func(ctx context.Context, offset int64) (io.ReadCloser, int64, error) {
		f, err := openRegular(l.blobPath(desc.Digest), l.blobName(desc.Digest))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, 0, fmt.Errorf("%w: blob %s is missing from OCI layout %s", errdefs.ErrBadImage, desc.Digest, l.ref.Path)
		}
		if err != nil {
			return nil, 0, err
		}
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			f.Close()
			return nil, 0, err
		}
		return f, offset, nil
	}
}
