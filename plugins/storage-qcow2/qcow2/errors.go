package qcow2

import "errors"

// Sentinel errors. Every error returned by this package that callers may
// want to branch on wraps one of these, with context (path, offset, table
// index) in the message; test with errors.Is.
var (
	// ErrNotQcow2 means the file does not start with the qcow2 magic.
	ErrNotQcow2 = errors.New("not a qcow2 image")
	// ErrUnsupported means the image is valid qcow2 but uses a feature this
	// package does not implement (encryption, external data files, extended
	// L2 entries, zstd compression, unknown incompatible features, writing
	// to images with internal snapshots, shrinking, ...).
	ErrUnsupported = errors.New("unsupported qcow2 feature")
	// ErrCorrupt means the image metadata is inconsistent or malformed.
	ErrCorrupt = errors.New("corrupt qcow2 image")
	// ErrBackingFile means a backing file reference is missing, unusable,
	// forms a loop, or (for Validate) is present at all.
	ErrBackingFile = errors.New("backing file")
	// ErrTooLarge means a size in the image (virtual size, table size)
	// exceeds a configured or implementation limit.
	ErrTooLarge = errors.New("size limit exceeded")
	// ErrReadOnly means a write was attempted on an image opened read-only.
	ErrReadOnly = errors.New("image is read-only")
	// ErrOutOfRange means an access beyond the virtual size of the image.
	ErrOutOfRange = errors.New("offset out of range")
)
