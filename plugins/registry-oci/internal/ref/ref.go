// Package ref owns the image reference syntax of the registry-oci image
// source: registry references with Docker's defaults, OCI image layout
// directories and `docker save` archives.
//
//	alpine                               docker.io/library/alpine:latest
//	ghcr.io/org/app:v1, app@sha256:...   tags and digests
//	docker://alpine                      same as alpine
//	oci-layout:DIR                       the only image in the layout
//	oci-layout:DIR:TAG                   org.opencontainers.image.ref.name == TAG
//	oci-layout:DIR@sha256:...            manifest or index digest in the layout
//	docker-archive:FILE                  the only image in the archive
//	docker-archive:FILE:REPO[:TAG]       the image with that RepoTag
//	docker-archive:FILE:@N               the N-th image (0-based) of manifest.json
//
// DIR and FILE end at the first colon, so they cannot contain one.
package ref

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/errdefs"
)

// Kind says where an image comes from.
type Kind int

const (
	Registry Kind = iota
	OCILayout
	DockerArchive
)

const (
	layoutPrefix  = "oci-layout:"
	archivePrefix = "docker-archive:"
	dockerPrefix  = "docker://"
	// dockerHub is how Docker Hub is spelled in canonical references.
	dockerHub = "docker.io"
)

// Reference is a parsed image reference.
type Reference struct {
	Kind Kind

	// Registry references.
	Name name.Reference // a name.Tag or name.Digest

	// Path is the absolute layout directory or archive file.
	Path string
	// Tag selects a layout entry by its org.opencontainers.image.ref.name
	// annotation, or an archive image by RepoTag (normalized).
	Tag string
	// Digest selects a layout entry by digest.
	Digest v1.Hash
	// Index selects the N-th archive image; -1 when unset.
	Index int
}

// Parse parses s. Errors wrap errdefs.ErrBadReference.
func Parse(s string) (Reference, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return Reference{}, fmt.Errorf("%w: empty image reference", errdefs.ErrBadReference)
	case strings.HasPrefix(s, layoutPrefix):
		return parseLayout(s)
	case strings.HasPrefix(s, archivePrefix):
		return parseArchive(s)
	}
	s = strings.TrimPrefix(s, dockerPrefix)
	n, err := name.ParseReference(s)
	if err != nil {
		return Reference{}, fmt.Errorf("%w: %q is not an image reference (want e.g. alpine, ghcr.io/org/app:tag, oci-layout:DIR, docker-archive:FILE): %v",
			errdefs.ErrBadReference, s, err)
	}
	return Reference{Kind: Registry, Name: n, Index: -1}, nil
}

func parseLayout(s string) (Reference, error) {
	rest := strings.TrimPrefix(s, layoutPrefix)
	r := Reference{Kind: OCILayout, Index: -1}
	if i := strings.LastIndex(rest, "@"); i >= 0 {
		h, err := v1.NewHash(rest[i+1:])
		if err != nil {
			return Reference{}, fmt.Errorf("%w: %q: bad digest after @: %v", errdefs.ErrBadReference, s, err)
		}
		r.Digest = h
		rest = rest[:i]
	} else if i := strings.Index(rest, ":"); i >= 0 {
		r.Tag = rest[i+1:]
		rest = rest[:i]
		if r.Tag == "" {
			return Reference{}, fmt.Errorf("%w: %q: empty tag after the directory", errdefs.ErrBadReference, s)
		}
	}
	p, err := absPath(rest, s)
	if err != nil {
		return Reference{}, err
	}
	r.Path = p
	return r, nil
}

func parseArchive(s string) (Reference, error) {
	rest := strings.TrimPrefix(s, archivePrefix)
	r := Reference{Kind: DockerArchive, Index: -1}
	if i := strings.Index(rest, ":"); i >= 0 {
		sel := rest[i+1:]
		rest = rest[:i]
		switch {
		case sel == "":
			return Reference{}, fmt.Errorf("%w: %q: empty image selector after the file name", errdefs.ErrBadReference, s)
		case strings.HasPrefix(sel, "@"):
			n, err := strconv.Atoi(sel[1:])
			if err != nil || n < 0 {
				return Reference{}, fmt.Errorf("%w: %q: @%s is not an image index (want @0, @1, ...)", errdefs.ErrBadReference, s, sel[1:])
			}
			r.Index = n
		default:
			tag, err := NormalizeTag(sel)
			if err != nil {
				return Reference{}, fmt.Errorf("%w: %q: %v", errdefs.ErrBadReference, s, err)
			}
			r.Tag = tag
		}
	}
	p, err := absPath(rest, s)
	if err != nil {
		return Reference{}, err
	}
	r.Path = p
	return r, nil
}

func absPath(p, whole string) (string, error) {
	if p == "" {
		return "", fmt.Errorf("%w: %q: missing path", errdefs.ErrBadReference, whole)
	}
	a, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("%w: %q: %v", errdefs.ErrBadReference, whole, err)
	}
	return a, nil
}

// NormalizeTag turns a repo[:tag] as found in `docker save` RepoTags into the
// canonical registry form, so "alpine" and "docker.io/library/alpine:latest"
// compare equal.
func NormalizeTag(s string) (string, error) {
	t, err := name.NewTag(s)
	if err != nil {
		return "", fmt.Errorf("%q is not a repository:tag: %v", s, err)
	}
	return Canonical(t), nil
}

// Canonical spells a registry reference the way boxctl shows and records it:
// Docker Hub as docker.io, always with a tag or digest.
func Canonical(n name.Reference) string {
	repo := n.Context()
	host := repo.RegistryStr()
	if host == name.DefaultRegistry {
		host = dockerHub
	}
	base := host + "/" + repo.RepositoryStr()
	switch t := n.(type) {
	case name.Digest:
		return base + "@" + t.DigestStr()
	case name.Tag:
		return base + ":" + t.TagStr()
	}
	return base + ":" + n.Identifier()
}

// Host returns the registry host as configuration names it (docker.io for
// Docker Hub), used to look up mirrors, credentials and insecure settings.
func Host(reg name.Registry) string {
	h := reg.RegistryStr()
	if h == name.DefaultRegistry {
		return dockerHub
	}
	return h
}

// String returns the canonical form of r.
func (r Reference) String() string {
	switch r.Kind {
	case OCILayout:
		switch {
		case r.Digest != (v1.Hash{}):
			return layoutPrefix + r.Path + "@" + r.Digest.String()
		case r.Tag != "":
			return layoutPrefix + r.Path + ":" + r.Tag
		}
		return layoutPrefix + r.Path
	case DockerArchive:
		switch {
		case r.Index >= 0:
			return archivePrefix + r.Path + ":@" + strconv.Itoa(r.Index)
		case r.Tag != "":
			return archivePrefix + r.Path + ":" + r.Tag
		}
		return archivePrefix + r.Path
	}
	if r.Name == nil {
		return ""
	}
	return Canonical(r.Name)
}

// IsDigest reports whether r pins content by digest, so a cached copy is
// always current.
func (r Reference) IsDigest() bool {
	switch r.Kind {
	case Registry:
		_, ok := r.Name.(name.Digest)
		return ok
	case OCILayout:
		return r.Digest != (v1.Hash{})
	}
	return false
}
