// Package errdefs owns the sentinel errors of the registry-oci image source.
// Every error returned by the image store wraps at most a few of these so that
// callers can branch with errors.Is, while the message itself says what
// happened and what to do. Each also matches the sdk error it crosses the
// wire as (sdk.Kind), so there is one mapping, the sdk's.
package errdefs

import "github.com/boxctl/boxctl/sdk"

var (
	// ErrNotFound: the image, tag, platform or cached record does not exist.
	ErrNotFound = sdk.ErrNotFound
	// ErrUnauthorized: the registry refused access (HTTP 401/403).
	ErrUnauthorized = sdk.Kind(sdk.ErrUnauthenticated, "unauthorized")
	// ErrUnreachable: the registry could not be contacted at all.
	ErrUnreachable = sdk.Kind(sdk.ErrUnavailable, "registry unreachable")
	// ErrDigestMismatch: content did not hash to the digest it was addressed by.
	ErrDigestMismatch = sdk.Kind(sdk.ErrInvalidArgument, "digest mismatch")
	// ErrBadImage: the image is malformed (bad manifest, config, or layer).
	ErrBadImage = sdk.Kind(sdk.ErrInvalidArgument, "bad image")
	// ErrBadReference: the reference string cannot be parsed.
	ErrBadReference = sdk.Kind(sdk.ErrInvalidArgument, "bad reference")
	// ErrUnsupported: the image uses a format this source does not handle.
	ErrUnsupported = sdk.Kind(sdk.ErrUnsupported, "unsupported")
	// ErrTooLarge: the image declares more unpacked content than the
	// configured limit allows.
	ErrTooLarge = sdk.Kind(sdk.ErrInvalidArgument, "image too large")
	// ErrNoSpace: the cache's file system filled up.
	ErrNoSpace = sdk.Kind(sdk.ErrInvalidState, "no space left")
)
