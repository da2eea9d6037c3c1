package qcow2

import "github.com/boxctl/boxctl/sdk"

// Sentinel errors. Every error returned by this package that callers may
// want to branch on wraps one of these, with context (path, offset, table
// index) in the message; test with errors.Is. Each also matches the sdk
// error it crosses the plugin wire as (sdk.Kind), so the storage plugin
// passes them on without mapping them.
var (
	// ErrNotQcow2 means the file does not start with the qcow2 magic.
	ErrNotQcow2 = sdk.Kind(sdk.ErrInvalidArgument, "not a qcow2 image")
	// ErrUnsupported means the image is valid qcow2 but uses a feature this
	// package does not implement (encryption, external data files, extended
	// L2 entries, zstd compression, unknown incompatible features, writing
	// to images with internal snapshots, shrinking, ...).
	ErrUnsupported = sdk.Kind(sdk.ErrUnsupported, "unsupported qcow2 feature")
	// ErrCorrupt means the image metadata is inconsistent or malformed.
	ErrCorrupt = sdk.Kind(sdk.ErrInvalidArgument, "corrupt qcow2 image")
	// ErrBackingFile means a backing file reference is missing, unusable
	// (not a regular file), forms a loop, or (for Validate) is present at
	// all.
	ErrBackingFile = sdk.Kind(sdk.ErrInvalidArgument, "backing file")
	// ErrTooLarge means a size in the image (virtual size, table size)
	// exceeds a configured or implementation limit.
	ErrTooLarge = sdk.Kind(sdk.ErrInvalidArgument, "size limit exceeded")
	// ErrReadOnly means a write was attempted on an image opened read-only.
	ErrReadOnly = sdk.Kind(sdk.ErrInvalidState, "image is read-only")
	// ErrOutOfRange means an access beyond the virtual size of the image.
	ErrOutOfRange = sdk.Kind(sdk.ErrInvalidArgument, "offset out of range")
)
