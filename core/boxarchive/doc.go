// Package boxarchive reads and writes box archives: one self-describing,
// versioned file holding a box's configuration, its flattened writable
// disk, optionally its snapshots and its image. `boxctl export` writes one,
// `boxctl import` reads one; docs/box-archive.md is the specification.
//
// An archive is a tar stream whose first member is an uncompressed JSON
// manifest describing every other member (kind, sizes, SHA-256 of the
// uncompressed bytes); each other member is zstd-compressed. The manifest
// comes first so that a reader can refuse an archive — unknown version,
// oversized or undeclared members, a box name already taken — before it
// reads a byte of data, and so that a writer can stream to a pipe: the
// writer compresses each member to a temporary file first, which is what
// it takes to know the sizes and checksums the manifest declares (a tar
// header needs the member's size before its data anyway).
//
// Reading treats the archive as hostile: Reader checks the manifest's
// schema and limits, then every member's name, type, order, sizes and
// checksum while it extracts, and removes what it extracted on any error.
// It knows nothing of plugins: the caller validates the extracted disks
// (qcow2 headers) and loads the image.
package boxarchive
