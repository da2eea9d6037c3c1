// Package qcow2 reads, writes, flattens and validates qcow2 disk images
// (versions 2 and 3, as specified in QEMU's docs/interop/qcow2.txt) in
// pure Go, for boxctl's storage plugin.
//
// It owns the on-disk format: headers and header extensions, L1/L2
// tables, refcount tables and blocks of any width, zero and compressed
// (deflate) clusters, and backing chains whose elements are qcow2 or raw
// files. New images are version 3 with refcounts kept exact on every
// write path (no lazy refcounts, no dirty bit); allocation is append-only.
//
// Not supported (refused with ErrUnsupported): encryption, external data
// files, extended L2 entries, zstd compression, writing to images with
// internal snapshots, shrinking. Image files are not locked against
// concurrent use by other processes (QEMU's own locks are not taken).
package qcow2
