package source

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/blobstore"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/errdefs"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/ref"
)

// RegistryConfig is how registries are reached.
type RegistryConfig struct {
	// Mirrors maps a registry host as written in references ("docker.io"
	// for Docker Hub, "ghcr.io", "localhost:5000") to endpoints tried in
	// order before the host itself. An endpoint is host[:port][/path-prefix],
	// optionally with an http:// (plain HTTP) or https:// scheme.
	Mirrors map[string][]string
	// Insecure lists registry hosts (host[:port]) reached over plain HTTP.
	// (localhost, loopback and private addresses may use HTTP anyway, as
	// go-containerregistry allows.)
	Insecure []string
	// Credentials per registry host; they take precedence over the keychain.
	Credentials map[string]Credential
	// NoDefaultKeychain disables Docker's config.json and credential helpers.
	NoDefaultKeychain bool
	// Transport is the HTTP transport underneath authentication; nil means
	// http.DefaultTransport.
	Transport http.RoundTripper
	// UserAgent is sent with every request.
	UserAgent string
}

// Credential is an explicit login for one registry host: a username and
// password, or a bearer token.
type Credential struct {
	Username string
	Password string
	Token    string
}

// keychain prefers configured credentials over Docker's keychain.
type keychain struct {
	creds    map[string]Credential
	fallback authn.Keychain
}

func (k keychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	return k.ResolveContext(context.Background(), r)
}

func (k keychain) ResolveContext(ctx context.Context, r authn.Resource) (authn.Authenticator, error) {
	host := r.RegistryStr()
	c, ok := k.creds[host]
	if !ok && host == name.DefaultRegistry {
		c, ok = k.creds["docker.io"]
	}
	if ok {
		if c.Token != "" {
			return authn.FromConfig(authn.AuthConfig{RegistryToken: c.Token}), nil
		}
		return &authn.Basic{Username: c.Username, Password: c.Password}, nil
	}
	if k.fallback != nil {
		return authn.Resolve(ctx, k.fallback, r)
	}
	return authn.Anonymous, nil
}

type endpoint struct {
	reg    name.Registry
	repo   string // repository path at this endpoint
	mirror bool
}

func (e endpoint) String() string { return e.reg.RegistryStr() }

// Registry is a Source for a registry reference.
type Registry struct {
	name      name.Reference
	host      string // as configured ("docker.io")
	endpoints []endpoint
	kc        keychain
	base      http.RoundTripper

	mu     sync.Mutex
	trans  map[int]http.RoundTripper
	active int
}

// NewRegistry prepares a source for a registry reference.
func NewRegistry(r name.Reference, cfg RegistryConfig) (*Registry, error) {
	base := cfg.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	if cfg.UserAgent != "" {
		base = transport.NewUserAgent(base, cfg.UserAgent)
	}
	s := &Registry{
		name:  r,
		host:  ref.Host(r.Context().Registry),
		base:  base,
		kc:    keychain{creds: cfg.Credentials},
		trans: map[int]http.RoundTripper{},
	}
	if !cfg.NoDefaultKeychain {
		s.kc.fallback = authn.DefaultKeychain
	}
	insecure := map[string]bool{}
	for _, h := range cfg.Insecure {
		insecure[h] = true
	}
	repo := r.Context().RepositoryStr()
	for _, m := range cfg.Mirrors[s.host] {
		ep, err := mirrorEndpoint(m, repo, insecure)
		if err != nil {
			return nil, err
		}
		s.endpoints = append(s.endpoints, ep)
	}
	reg := r.Context().Registry
	if insecure[s.host] || insecure[reg.RegistryStr()] {
		var err error
		if reg, err = name.NewRegistry(reg.RegistryStr(), name.Insecure); err != nil {
			return nil, fmt.Errorf("%w: registry %q: %v", errdefs.ErrBadReference, s.host, err)
		}
	}
	s.endpoints = append(s.endpoints, endpoint{reg: reg, repo: repo})
	return s, nil
}

func mirrorEndpoint(m, repo string, insecure map[string]bool) (endpoint, error) {
	var opts []name.Option
	switch {
	case strings.HasPrefix(m, "http://"):
		m = strings.TrimPrefix(m, "http://")
		opts = append(opts, name.Insecure)
	case strings.HasPrefix(m, "https://"):
		m = strings.TrimPrefix(m, "https://")
	}
	host, prefix, _ := strings.Cut(strings.TrimSuffix(m, "/"), "/")
	if insecure[host] {
		opts = append(opts, name.Insecure)
	}
	reg, err := name.NewRegistry(host, opts...)
	if err != nil {
		return endpoint{}, fmt.Errorf("bad mirror %q: %v", m, err)
	}
	if prefix != "" {
		repo = prefix + "/" + repo
	}
	return endpoint{reg: reg, repo: repo, mirror: true}, nil
}

// Describe implements Source.
func (s *Registry) Describe() string { return "registry " + s.host }

// Close implements Source.
func (s *Registry) Close() error { return nil }

func (s *Registry) transport(ctx context.Context, i int) (http.RoundTripper, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.trans[i]; ok {
		return t, nil
	}
	ep := s.endpoints[i]
	auth, err := authn.Resolve(ctx, s.kc, ep.reg)
	if err != nil {
		return nil, fmt.Errorf("credentials for %s: %w", ep.reg.RegistryStr(), err)
	}
	scope := ep.reg.Repo(ep.repo).Scope(transport.PullScope)
	t, err := transport.NewWithContext(ctx, ep.reg, auth, s.base, []string{scope})
	if err != nil {
		return nil, err
	}
	s.trans[i] = t
	return t, nil
}

var manifestAccept = strings.Join([]string{
	string(types.OCIImageIndex),
	string(types.OCIManifestSchema1),
	string(types.DockerManifestList),
	string(types.DockerManifestSchema2),
}, ",")

// Resolve implements Source.
func (s *Registry) Resolve(ctx context.Context, want v1.Platform) (*Resolved, error) {
	var firstErr error
	for i, ep := range s.endpoints {
		r, err := s.resolveAt(ctx, i, want)
		if err == nil {
			s.mu.Lock()
			s.active = i
			s.mu.Unlock()
			return r, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		err = s.classify(err, ep, "")
		if !ep.mirror || errors.Is(err, errdefs.ErrBadImage) || errors.Is(err, errdefs.ErrDigestMismatch) {
			if firstErr != nil && !errors.Is(err, errdefs.ErrBadImage) {
				return nil, fmt.Errorf("%w (mirrors failed too; first: %v)", err, firstErr)
			}
			return nil, err
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, firstErr
}

func (s *Registry) resolveAt(ctx context.Context, i int, want v1.Platform) (*Resolved, error) {
	body, mt, d, err := s.getManifest(ctx, i, s.name.Identifier())
	if err != nil {
		return nil, err
	}
	kind, err := Kind(body, mt)
	if err != nil {
		return nil, err
	}
	if !kind.IsIndex() {
		return &Resolved{Manifest: body, ManifestDigest: d, MediaType: kind}, nil
	}
	desc, err := SelectPlatform(body, want, ref.Canonical(s.name))
	if err != nil {
		return nil, err
	}
	mbody, mmt, md, err := s.getManifest(ctx, i, desc.Digest.String())
	if err != nil {
		return nil, err
	}
	mkind, err := Kind(mbody, mmt)
	if err != nil {
		return nil, err
	}
	if mkind.IsIndex() {
		return nil, fmt.Errorf("%w: index entry %s is itself an index; nested indexes are not supported", errdefs.ErrUnsupported, md)
	}
	return &Resolved{Manifest: mbody, ManifestDigest: md, MediaType: mkind, Index: body, IndexDigest: d, Platform: desc.Platform}, nil
}

func (s *Registry) getManifest(ctx context.Context, i int, ident string) ([]byte, types.MediaType, v1.Hash, error) {
	t, err := s.transport(ctx, i)
	if err != nil {
		return nil, "", v1.Hash{}, err
	}
	ep := s.endpoints[i]
	u := fmt.Sprintf("%s://%s/v2/%s/manifests/%s", ep.reg.Scheme(), ep.reg.RegistryStr(), ep.repo, ident)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, "", v1.Hash{}, err
	}
	req.Header.Set("Accept", manifestAccept)
	resp, err := (&http.Client{Transport: t}).Do(req)
	if err != nil {
		return nil, "", v1.Hash{}, err
	}
	defer resp.Body.Close()
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		return nil, "", v1.Hash{}, &manifestError{ident: ident, err: err}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxManifestSize+1))
	if err != nil {
		return nil, "", v1.Hash{}, fmt.Errorf("read manifest: %w", err)
	}
	if len(body) > MaxManifestSize {
		return nil, "", v1.Hash{}, fmt.Errorf("%w: manifest %s is larger than %d bytes", errdefs.ErrBadImage, ident, MaxManifestSize)
	}
	d := DigestOf(body)
	if want, err := v1.NewHash(ident); err == nil && want != d {
		return nil, "", v1.Hash{}, fmt.Errorf("%w: registry %s served manifest %s with content hashing to %s; nothing was cached",
			errdefs.ErrDigestMismatch, ep, want, d)
	}
	return body, types.MediaType(strings.TrimSpace(strings.Split(resp.Header.Get("Content-Type"), ";")[0])), d, nil
}

type manifestError struct {
	ident string
	err   error
}

func (e *manifestError) Error() string { return e.err.Error() }
func (e *manifestError) Unwrap() error { return e.err }

// Fetcher implements Source. Blobs come from the endpoint that resolved the
// manifest; if it fails before sending anything, the others are tried.
func (s *Registry) Fetcher(desc v1.Descriptor) blobstore.Fetcher {
	return func(ctx context.Context, offset int64) (io.ReadCloser, int64, error) {
		s.mu.Lock()
		first := s.active
		s.mu.Unlock()
		order := []int{first}
		for i := range s.endpoints {
			if i != first {
				order = append(order, i)
			}
		}
		var firstErr error
		for _, i := range order {
			rc, start, err := s.fetchAt(ctx, i, desc, offset)
			if err == nil {
				return rc, start, nil
			}
			if ctx.Err() != nil {
				return nil, 0, ctx.Err()
			}
			if firstErr == nil {
				firstErr = s.classify(err, s.endpoints[i], desc.Digest.String())
			}
		}
		return nil, 0, firstErr
	}
}

func (s *Registry) fetchAt(ctx context.Context, i int, desc v1.Descriptor, offset int64) (io.ReadCloser, int64, error) {
	t, err := s.transport(ctx, i)
	if err != nil {
		return nil, 0, err
	}
	ep := s.endpoints[i]
	u := fmt.Sprintf("%s://%s/v2/%s/blobs/%s", ep.reg.Scheme(), ep.reg.RegistryStr(), ep.repo, desc.Digest)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, 0, err
	}
	if offset > 0 && desc.Size > offset {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", offset, desc.Size-1))
	}
	resp, err := (&http.Client{Transport: t}).Do(req)
	if err != nil {
		return nil, 0, err
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return resp.Body, 0, nil
	case http.StatusPartialContent:
		var start, end, total int64
		if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-%d/%d", &start, &end, &total); err != nil || start > offset {
			resp.Body.Close()
			return nil, 0, fmt.Errorf("registry %s sent an unusable Content-Range %q", ep, resp.Header.Get("Content-Range"))
		}
		return resp.Body, start, nil
	}
	defer resp.Body.Close()
	return nil, 0, transport.CheckError(resp, http.StatusOK)
}

// classify turns transport and network errors into sentinel-wrapped errors
// that say what to do. blob is set for blob fetches.
func (s *Registry) classify(err error, ep endpoint, blob string) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, errdefs.ErrBadImage) || errors.Is(err, errdefs.ErrDigestMismatch) ||
		errors.Is(err, errdefs.ErrUnsupported) || errors.Is(err, errdefs.ErrNotFound) {
		return err
	}
	host := ep.reg.RegistryStr()
	if !ep.mirror {
		host = s.host
	}
	where := fmt.Sprintf("repository %s on registry %s", ep.repo, host)
	var terr *transport.Error
	if errors.As(err, &terr) {
		switch terr.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%w: registry %s refused access to %s (%d %s): log in with `docker login %s` (boxctl uses Docker's config.json and credential helpers) or set credentials for %s in boxctl's registry configuration; if the repository does not exist, check the name",
				errdefs.ErrUnauthorized, host, ep.repo, terr.StatusCode, http.StatusText(terr.StatusCode), host, host)
		case http.StatusNotFound:
			code := ""
			if len(terr.Errors) > 0 {
				code = string(terr.Errors[0].Code)
			}
			var merr *manifestError
			switch {
			case blob != "":
				return fmt.Errorf("%w: blob %s is missing from %s; the image there is incomplete", errdefs.ErrNotFound, blob, where)
			case code == string(transport.NameUnknownErrorCode):
				return fmt.Errorf("%w: %s does not exist (image %s); check the image name", errdefs.ErrNotFound, where, ref.Canonical(s.name))
			case errors.As(err, &merr) && strings.HasPrefix(merr.ident, "sha256:"):
				return fmt.Errorf("%w: manifest %s not found in %s", errdefs.ErrNotFound, merr.ident, where)
			default:
				return fmt.Errorf("%w: tag %q not found in %s (image %s); check the tag", errdefs.ErrNotFound, s.name.Identifier(), where, ref.Canonical(s.name))
			}
		case http.StatusTooManyRequests:
			return fmt.Errorf("registry %s is rate-limiting pulls (429): log in to raise the limit, configure a mirror, or retry later: %w", host, err)
		}
		return fmt.Errorf("registry %s failed for %s: %w", host, ep.repo, err)
	}
	if hint, ok := networkProblem(err); ok {
		return fmt.Errorf("%w: cannot reach registry %s: %v — is there a network?%s", errdefs.ErrUnreachable, host, err, hint)
	}
	return fmt.Errorf("registry %s: %w", host, err)
}

// networkProblem reports whether err means the registry could not be talked
// to, with a hint for the common misconfigurations.
func networkProblem(err error) (string, bool) {
	var (
		dnsErr  *net.DNSError
		opErr   *net.OpError
		certErr *tls.CertificateVerificationError
		uaErr   x509.UnknownAuthorityError
		hostErr x509.HostnameError
	)
	switch {
	case errors.As(err, &certErr), errors.As(err, &uaErr), errors.As(err, &hostErr):
		return " (its TLS certificate is not trusted: install its CA, or if it serves plain HTTP list it as an insecure registry)", true
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return " (it speaks plain HTTP: list it as an insecure registry)", true
	case errors.As(err, &dnsErr):
		return " (the host name does not resolve; check DNS or the registry name)", true
	case errors.Is(err, syscall.ECONNREFUSED):
		return " (connection refused: is the registry running on that port?)", true
	case errors.As(err, &opErr), errors.Is(err, context.DeadlineExceeded), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return " (check proxy and firewall settings, or configure a mirror)", true
	}
	return "", false
}
