package source

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/errdefs"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/ref"
)

// Push uploads img to the registry and repository r names, never to a
// mirror, with cfg's credentials (then Docker's keychain unless disabled)
// and plain HTTP for the insecure hosts cfg lists. Blobs the registry has
// already are not sent again. The manifest is sent as img's raw bytes, so
// the pushed digest is img's.
func Push(ctx context.Context, r name.Reference, cfg RegistryConfig, img v1.Image) error {
	host := ref.Host(r.Context().Registry)
	for _, h := range cfg.Insecure {
		if h == host || h == r.Context().RegistryStr() {
			plain, err := name.ParseReference(r.Name(), name.Insecure)
			if err != nil {
				return fmt.Errorf("%w: %s: %v", errdefs.ErrBadReference, r.Name(), err)
			}
			r = plain
			break
		}
	}
	kc := keychain{creds: cfg.Credentials}
	if !cfg.NoDefaultKeychain {
		kc.fallback = authn.DefaultKeychain
	}
	base := cfg.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	opts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(kc), remote.WithTransport(base)}
	if cfg.UserAgent != "" {
		opts = append(opts, remote.WithUserAgent(cfg.UserAgent))
	}
	if err := remote.Write(r, img, opts...); err != nil {
		return classifyPush(err, host, r.Context().RepositoryStr())
	}
	return nil
}

// classifyPush turns a push failure into a sentinel-wrapped error that
// says what to do.
func classifyPush(err error, host, repo string) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, errdefs.ErrNotFound) || errors.Is(err, errdefs.ErrBadImage) {
		return err
	}
	var terr *transport.Error
	if errors.As(err, &terr) {
		switch terr.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%w: registry %s refused the push to %s (%d %s): log in with `docker login %s` (boxctl uses Docker's config.json and credential helpers) or set credentials for %s in boxctl's registry configuration, and check that you may push to that repository",
				errdefs.ErrUnauthorized, host, repo, terr.StatusCode, http.StatusText(terr.StatusCode), host, host)
		case http.StatusNotFound:
			return fmt.Errorf("%w: registry %s has no repository %s to push to (404): create it there first, or check the name: %v", errdefs.ErrNotFound, host, repo, err)
		}
		return fmt.Errorf("push to registry %s (%s): %w", host, repo, err)
	}
	if hint, ok := networkProblem(err); ok {
		return fmt.Errorf("%w: cannot reach registry %s to push: %v — is there a network?%s", errdefs.ErrUnreachable, host, err, hint)
	}
	return fmt.Errorf("push to registry %s (%s): %w", host, repo, err)
}
