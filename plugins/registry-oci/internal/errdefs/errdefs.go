// Package errdefs owns the sentinel errors of the registry-oci image source.
// Every error returned by the image store wraps at most a few of these so that
// callers (the plugin server, the CLI) can branch with errors.Is and map them
// to gRPC codes or exit statuses, while the message itself says what happened
// and what to do.
package errdefs

import "errors"

var (
	// ErrNotFound: the image, tag, platform or cached record does not exist.
	ErrNotFound = errors.New("not found")
	// ErrUnauthorized: the registry refused access (HTTP 401/403).
	ErrUnauthorized = errors.New("unauthorized")
	// ErrUnreachable: the registry could not be contacted at all.
	ErrUnreachable = errors.New("registry unreachable")
	// ErrDigestMismatch: content did not hash to the digest it was addressed by.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrBadImage: the image is malformed (bad manifest, config, or layer).
	ErrBadImage = errors.New("bad image")
	// ErrBadReference: the reference string cannot be parsed.
	ErrBadReference = errors.New("bad reference")
	// ErrUnsupported: the image uses a format this source does not handle.
	ErrUnsupported = errors.New("unsupported")
	// ErrTooLarge: the image declares more unpacked content than the
	// configured limit allows.
	ErrTooLarge = errors.New("image too large")
	// ErrNoSpace: the cache's file system filled up.
	ErrNoSpace = errors.New("no space left")
)
