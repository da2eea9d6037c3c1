// Package store is the qcow2 storage plugin's implementation of
// sdk.DiskBackend and sdk.SnapshotBackend, with every optional storage
// feature (sdk.DiskInspector, Resizer, Exporter, Importer, Cloner): the
// boxes' writable disks, their snapshots and clones, kept under the
// plugin's state directory. Its errors are the sdk's (or match their sdk
// kind, as the qcow2 package's do), so the sdk maps them to the wire.
//
// # On-disk layout
//
//	<state>/meta.db                bbolt: disks, bases, journal (opened per transaction)
//	<state>/meta.lock              flock guarding meta.db (shared: read, exclusive: write)
//	<state>/locks/<disk-id>.lock   per-disk operation lock
//	<state>/locks/blank-<n>.lock   guards building the blank base of n bytes
//	<state>/disks/<disk-id>.qcow2  the disk's writable overlay (what the VM opens)
//	<state>/bases/<base-id>.qcow2  immutable (0444) frozen states, shared
//	<state>/blank/ext4-<n>.raw     immutable (0444) sparse blank ext4 of n bytes
//
// Overlays and bases name their backing file relatively ("../bases/<id>.qcow2",
// "../blank/ext4-<n>.raw"); disks/ and bases/ are siblings, so a file keeps a
// valid backing reference when it moves from one to the other. That move is
// how a snapshot or a clone freezes a disk in constant time: the overlay is
// renamed into bases/ and made read-only, and fresh empty overlays are
// created on top of it.
//
// # Metadata
//
// meta.db holds one record per disk (its base, its snapshots, where it was
// cloned from), one per base (its parent and its reference count) and the
// journal. A base's reference count is the number of disks whose overlay
// backs onto it, snapshots that name it and bases whose parent it is. A
// frozen base whose count drops to zero is deleted (and its parent
// released, recursively). Blank bases are a cache: they are kept when
// unreferenced so that the next disk of that size needs no mkfs.
//
// # Crash safety
//
// Every multi-step operation first writes an intent record to the journal
// (in the same transaction that checks its preconditions) naming every file
// it may create or move. Each file step is atomic (write a temporary file,
// fsync, rename, fsync the directory). The operation ends with one
// transaction that applies its metadata changes and deletes the intent;
// files that became garbage are listed in a cleanup intent written by that
// same transaction and deleted afterwards. Recovery (at Configure, and
// before any operation on a disk named by a dead intent) rolls an
// unfinished operation back to its before state, except a restore whose
// overlay was already replaced, which it rolls forward. An operation holds
// the locks of the disks it names from its first to its last transaction,
// so an intent whose locks can be taken belongs to a dead process.
//
// # Test hook
//
// WithCrashHook installs a function called at every named step of every
// multi-step operation (see CrashPoints). The plugin binary wires it to the
// environment variable BOXCTL_QCOW2_CRASH_AT=<op>:<step>, which makes the
// process exit(99) at that step. It exists only for the crash tests.
package store
