// Package source owns getting images from where they live: OCI distribution
// registries (with mirrors, plain-HTTP hosts and credentials), OCI image
// layout directories and `docker save` archives. A Source resolves a
// reference to one platform-specific manifest and hands out blob fetchers;
// it never writes to the cache itself (package blobstore verifies and stores
// what the fetchers return).
package source

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/blobstore"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/errdefs"
)

// Source is where one reference's image comes from.
type Source interface {
	// Resolve finds the image manifest for the platform. An index is
	// resolved to the entry matching want.
	Resolve(ctx context.Context, want v1.Platform) (*Resolved, error)
	// Fetcher returns a fetcher for a blob named by the resolved manifest.
	Fetcher(desc v1.Descriptor) blobstore.Fetcher
	// Describe names the source in messages ("registry ghcr.io", "OCI layout /x").
	Describe() string
	Close() error
}

// Resolved is a platform-specific image manifest, verified against its
// digest, and the index it was chosen from (if any).
type Resolved struct {
	Manifest       []byte
	ManifestDigest v1.Hash
	MediaType      types.MediaType
	// Index and IndexDigest are set when the reference named an index.
	Index       []byte
	IndexDigest v1.Hash
	// Platform is what the index entry said, if anything.
	Platform *v1.Platform
}

// Manifest is the subset of an OCI / Docker v2 image manifest used here.
type Manifest struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     types.MediaType `json:"mediaType,omitempty"`
	Config        v1.Descriptor   `json:"config"`
	Layers        []v1.Descriptor `json:"layers"`
	// Manifests is set for indexes; used for sniffing the kind.
	Manifests []json.RawMessage `json:"manifests,omitempty"`
}

// MaxManifestSize bounds manifests and indexes read into memory.
const MaxManifestSize = 8 << 20

// Kind says what a manifest document is.
func Kind(body []byte, mediaType types.MediaType) (types.MediaType, error) {
	var m Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return "", fmt.Errorf("%w: manifest is not JSON: %v", errdefs.ErrBadImage, err)
	}
	mt := m.MediaType
	if mt == "" {
		mt = mediaType
	}
	switch {
	case mt.IsSchema1() || m.SchemaVersion == 1:
		return "", fmt.Errorf("%w: Docker schema 1 manifests are deprecated and not supported; re-push the image with a current tool", errdefs.ErrUnsupported)
	case mt.IsIndex() || (mt == "" && m.Manifests != nil):
		if mt == "" {
			mt = types.OCIImageIndex
		}
		return mt, nil
	case mt.IsImage() || (mt == "" && m.Config.Digest.Hex != ""):
		if mt == "" {
			mt = types.OCIManifestSchema1
		}
		return mt, nil
	}
	return "", fmt.Errorf("%w: %q is not an image manifest or index (is this an artifact rather than a container image?)", errdefs.ErrUnsupported, mt)
}

// ParseManifest parses and sanity-checks an image manifest.
func ParseManifest(body []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("%w: manifest is not JSON: %v", errdefs.ErrBadImage, err)
	}
	if m.Config.Digest.Hex == "" {
		return nil, fmt.Errorf("%w: manifest has no config", errdefs.ErrBadImage)
	}
	for i, l := range m.Layers {
		if l.Digest.Algorithm != "sha256" {
			return nil, fmt.Errorf("%w: layer %d: digest %q is not sha256", errdefs.ErrUnsupported, i, l.Digest)
		}
		if l.Size < 0 {
			return nil, fmt.Errorf("%w: layer %d: negative size", errdefs.ErrBadImage, i)
		}
		if len(l.URLs) > 0 && !l.MediaType.IsDistributable() {
			return nil, fmt.Errorf("%w: layer %s is a foreign (non-distributable) layer", errdefs.ErrUnsupported, l.Digest)
		}
	}
	return &m, nil
}

// DigestOf returns the sha256 digest of b.
func DigestOf(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}

// SelectPlatform picks the manifest for want from an index. Entries for other
// platforms, and attestation entries (unknown/unknown), never match; an
// unset variant in want matches any variant (arm64 images say v8 or
// nothing), a set one must match.
func SelectPlatform(index []byte, want v1.Platform, where string) (v1.Descriptor, error) {
	im, err := v1.ParseIndexManifest(strings.NewReader(string(index)))
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("%w: bad image index from %s: %v", errdefs.ErrBadImage, where, err)
	}
	var have []string
	for _, d := range im.Manifests {
		if d.Platform == nil {
			continue
		}
		p := *d.Platform
		if p.OS == "unknown" {
			continue
		}
		have = append(have, p.String())
		if PlatformMatches(p, want) && (d.MediaType == "" || d.MediaType.IsImage() || d.MediaType.IsIndex()) {
			return d, nil
		}
	}
	// An index with a single entry that declares no platform is still an
	// unambiguous answer.
	if len(im.Manifests) == 1 && im.Manifests[0].Platform == nil {
		return im.Manifests[0], nil
	}
	sort.Strings(have)
	return v1.Descriptor{}, fmt.Errorf("%w: %s has no image for platform %s (it has: %s); choose one of those with --platform",
		errdefs.ErrNotFound, where, want.String(), strings.Join(have, ", "))
}

// PlatformMatches reports whether an image platform satisfies want.
func PlatformMatches(p, want v1.Platform) bool {
	if p.OS != want.OS || p.Architecture != want.Architecture {
		return false
	}
	if want.Variant == "" {
		return true
	}
	norm := func(v string) string {
		if p.Architecture == "arm64" && v == "" {
			return "v8"
		}
		return v
	}
	return norm(p.Variant) == norm(want.Variant)
}
