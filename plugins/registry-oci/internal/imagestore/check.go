package imagestore

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/ref"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/source"
)

// CheckReference says whether a pull of reference for platform ("" for
// the default) could work, without pulling and without network access, so
// a box that can never start is refused when it is created: the
// reference's syntax, the platform (a Linux one, on an architecture images
// exist for), and for local sources that they exist and can be read. An
// OCI layout is resolved as a pull would (its index, manifest and config
// are small local files), so a missing tag, platform or a non-Linux image
// is found too. It returns the canonical reference.
func (s *Store) CheckReference(ctx context.Context, reference, platform string) (string, error) {
	r, err := ref.Parse(reference)
	if err != nil {
		return "", err
	}
	plat := s.platform
	if platform != "" {
		if plat, err = ParsePlatform(platform); err != nil {
			return "", err
		}
		if err := CheckPlatform(plat); err != nil {
			return "", err
		}
	}
	canonical := r.String()
	switch r.Kind {
	case ref.OCILayout:
		if err := s.checkLayout(ctx, r, canonical, plat, platform != ""); err != nil {
			return "", err
		}
	case ref.DockerArchive:
		if err := source.CheckArchive(r); err != nil {
			return "", err
		}
	}
	return canonical, nil
}

func (s *Store) checkLayout(ctx context.Context, r ref.Reference, canonical string, plat Platform, explicit bool) error {
	src, err := source.NewLayout(r)
	if err != nil {
		return err
	}
	defer src.Close()
	res, err := src.Resolve(ctx, plat.v1())
	if err != nil {
		return err
	}
	man, err := source.ParseManifest(res.Manifest)
	if err != nil {
		return fmt.Errorf("%s: %w", canonical, err)
	}
	if man.Config.Size > maxConfigSize {
		return fmt.Errorf("%w: %s: the image config is %d bytes, more than the %d allowed", ErrBadImage, canonical, man.Config.Size, maxConfigSize)
	}
	rc, _, err := src.Fetcher(man.Config)(ctx, 0)
	if err != nil {
		return fmt.Errorf("image config of %s: %w", canonical, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxConfigSize+1))
	if err != nil {
		return fmt.Errorf("image config of %s: %w", canonical, err)
	}
	if got := source.DigestOf(b); got != man.Config.Digest {
		return fmt.Errorf("%w: the image config of %s hashes to %s, not %s", ErrDigestMismatch, canonical, got, man.Config.Digest)
	}
	cfg, err := parseConfig(b)
	if err != nil {
		return fmt.Errorf("image config of %s: %w", canonical, err)
	}
	imgPlat := Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}
	if explicit && !source.PlatformMatches(imgPlat.v1(), plat.v1()) {
		return fmt.Errorf("%w: %s is an image for %s, not the requested %s", ErrNotFound, canonical, imgPlat, plat)
	}
	return runnable(canonical, imgPlat, len(man.Layers))
}

// architectures are the values the OCI image spec allows for a Linux
// image's architecture (Go's GOARCH names).
var architectures = []string{"386", "amd64", "arm", "arm64", "loong64", "mips", "mipsle", "mips64", "mips64le", "ppc64", "ppc64le", "riscv64", "s390x"}

// archAliases are names people write for those.
var archAliases = map[string]string{
	"x86_64": "amd64", "x86-64": "amd64", "x64": "amd64", "aarch64": "arm64", "armhf": "arm", "armel": "arm",
	"i386": "386", "i686": "386", "x86": "386", "ppc64el": "ppc64le", "riscv": "riscv64",
}

var variantRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.]*$`)

// CheckPlatform refuses a platform no box can run an image for: boxes are
// Linux guests, and the architecture must be one images are built for.
func CheckPlatform(p Platform) error {
	if p.OS != "linux" {
		return fmt.Errorf("%w: platform %s: boxes run Linux guests, so the os must be linux (e.g. linux/%s)", ErrBadReference, p, orDefault(canonicalArch(p.Architecture), "amd64"))
	}
	if !slices.Contains(architectures, p.Architecture) {
		hint := "one of " + strings.Join(architectures, ", ")
		if a, ok := archAliases[strings.ToLower(p.Architecture)]; ok {
			hint = fmt.Sprintf("%q (write linux/%s)", a, a)
		}
		return fmt.Errorf("%w: platform %s: unknown architecture %q; image architectures are Go's names: %s", ErrBadReference, p, p.Architecture, hint)
	}
	if p.Variant != "" && !variantRE.MatchString(p.Variant) {
		return fmt.Errorf("%w: platform %s: malformed variant %q (variants look like v7, v8 or v8.2)", ErrBadReference, p, p.Variant)
	}
	return nil
}

func canonicalArch(a string) string {
	if c, ok := archAliases[strings.ToLower(a)]; ok {
		return c
	}
	if slices.Contains(architectures, a) {
		return a
	}
	return ""
}
