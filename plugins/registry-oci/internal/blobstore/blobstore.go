// Package blobstore owns the content-addressed blob cache shared by every box
// and every boxctl process on a host.
//
// On disk, under the store root:
//
//	blobs/sha256/<hex>        verified, immutable blobs (mode 0444)
//	tmp/blob-<hex>.partial    an interrupted or in-flight download of <hex>
//	locks/blob-<hex>.lock     flock held while <hex> is being fetched
//
// A blob becomes visible only by rename(2) after its bytes were hashed while
// streaming, matched against the digest and size, and fsynced; a reader that
// finds blobs/sha256/<hex> may trust it. Fetches of one digest are serialized
// across processes by the per-digest lock, so N concurrent pullers download it
// once: the first fetches, the others wait and then find it present. The
// .partial file is only touched by the lock holder, which makes it safe to
// resume: after a crash (kill -9) the next holder re-hashes what is there and
// asks the source for the rest.
package blobstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/boxctl/boxctl/internal/lockfile"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/errdefs"
)

// Store is a content-addressed blob store rooted at a directory.
// It is safe for concurrent use by goroutines and processes.
type Store struct {
	root string
}

// Open prepares the store directories under root.
func Open(root string) (*Store, error) {
	for _, d := range []string{"blobs/sha256", "tmp", "locks"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, fmt.Errorf("create blob store: %w", err)
		}
	}
	return &Store{root: root}, nil
}

// Root returns the store's root directory.
func (s *Store) Root() string { return s.root }

// TmpDir is where in-progress files live; it is on the same file system as
// the blobs so that commits are atomic renames.
func (s *Store) TmpDir() string { return filepath.Join(s.root, "tmp") }

// LockDir holds the lock files.
func (s *Store) LockDir() string { return filepath.Join(s.root, "locks") }

// Path is where blob d lives once present.
func (s *Store) Path(d v1.Hash) string {
	return filepath.Join(s.root, "blobs", d.Algorithm, d.Hex)
}

func (s *Store) partialPath(d v1.Hash) string {
	return filepath.Join(s.root, "tmp", "blob-"+d.Hex+".partial")
}

func (s *Store) lockPath(d v1.Hash) string {
	return filepath.Join(s.root, "locks", "blob-"+d.Hex+".lock")
}

func checkDigest(d v1.Hash) error {
	if d.Algorithm != "sha256" || len(d.Hex) != 64 {
		return fmt.Errorf("%w: digest %q: only sha256 digests are supported", errdefs.ErrUnsupported, d)
	}
	if _, err := hex.DecodeString(d.Hex); err != nil {
		return fmt.Errorf("%w: digest %q is not hex", errdefs.ErrBadImage, d)
	}
	return nil
}

// Stat reports whether blob d is present and its size.
func (s *Store) Stat(d v1.Hash) (size int64, ok bool, err error) {
	if err := checkDigest(d); err != nil {
		return 0, false, err
	}
	fi, err := os.Stat(s.Path(d))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("stat blob %s: %w", d, err)
	}
	return fi.Size(), true, nil
}

// Open opens a present blob. A missing blob is errdefs.ErrNotFound.
func (s *Store) Open(d v1.Hash) (*os.File, error) {
	if err := checkDigest(d); err != nil {
		return nil, err
	}
	f, err := os.Open(s.Path(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("blob %s is not in the cache: %w", d, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("open blob %s: %w", d, err)
	}
	return f, nil
}

// ReadAll reads a present blob of at most limit bytes.
func (s *Store) ReadAll(d v1.Hash, limit int64) ([]byte, error) {
	f, err := s.Open(d)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read blob %s: %w", d, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: blob %s is larger than %d bytes", errdefs.ErrBadImage, d, limit)
	}
	return b, nil
}

// Remove deletes blob d (and any partial download of it). Callers make sure
// nothing references it (the image store does so under its GC lock).
func (s *Store) Remove(d v1.Hash) error {
	if err := checkDigest(d); err != nil {
		return err
	}
	for _, p := range []string{s.Path(d), s.partialPath(d)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove blob %s: %w", d, err)
		}
	}
	return nil
}

// Walk calls fn for every present blob.
func (s *Store) Walk(fn func(d v1.Hash, size int64) error) error {
	dir := filepath.Join(s.root, "blobs", "sha256")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list blobs: %w", err)
	}
	for _, e := range ents {
		d := v1.Hash{Algorithm: "sha256", Hex: e.Name()}
		if checkDigest(d) != nil {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed concurrently
		}
		if err := fn(d, fi.Size()); err != nil {
			return err
		}
	}
	return nil
}

// State is a step of an ingest, reported through IngestOptions.Progress.
type State int

const (
	// Waiting: another goroutine or process is fetching this blob.
	Waiting State = iota
	// Downloading: bytes are arriving.
	Downloading
	// Verifying: all bytes arrived; digest check, fsync and commit follow.
	Verifying
	// Done: the blob was fetched and committed.
	Done
	// Cached: the blob was already present; nothing was fetched.
	Cached
)

func (s State) String() string {
	switch s {
	case Waiting:
		return "waiting"
	case Downloading:
		return "downloading"
	case Verifying:
		return "verifying"
	case Done:
		return "done"
	case Cached:
		return "cached"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Fetcher opens blob content starting at offset. It returns the offset it
// actually starts at, which may be lower (a source that cannot seek returns
// 0); the ingest skips the difference.
type Fetcher func(ctx context.Context, offset int64) (rc io.ReadCloser, start int64, err error)

// IngestOptions tune Ingest.
type IngestOptions struct {
	// Size is the expected size from the descriptor, or -1 if unknown. A
	// source that sends more or fewer bytes is an error.
	Size int64
	// Check, if set, reads the complete content as it streams (in its own
	// goroutine) and may reject it; a rejected blob is not committed and its
	// partial download is deleted. Check must read until EOF or fail.
	Check func(r io.Reader) error
	// Progress, if set, is told about state changes and bytes done.
	Progress func(state State, done, total int64)
}

// Result describes a finished ingest.
type Result struct {
	// Cached: the blob was present before (possibly because another process
	// fetched it while this one waited).
	Cached bool
	// Resumed: bytes from an interrupted earlier download were reused.
	Resumed int64
	Size    int64
}

// copyBuf is the read size of ingests.
const copyBuf = 1 << 20

// Ingest makes blob d present, fetching it if needed. It is safe to call
// concurrently for the same digest from many goroutines and processes.
func (s *Store) Ingest(ctx context.Context, d v1.Hash, fetch Fetcher, opts IngestOptions) (Result, error) {
	if err := checkDigest(d); err != nil {
		return Result{}, err
	}
	progress := opts.Progress
	if progress == nil {
		progress = func(State, int64, int64) {}
	}
	if r, ok, err := s.present(d, opts.Size); err != nil || ok {
		if ok {
			progress(Cached, r.Size, r.Size)
		}
		return r, err
	}

	lock, ok, err := lockfile.TryAcquire(s.lockPath(d), false)
	if err != nil {
		return Result{}, err
	}
	if !ok {
		progress(Waiting, 0, opts.Size)
		if lock, err = lockfile.Acquire(ctx, s.lockPath(d), false); err != nil {
			return Result{}, err
		}
	}
	defer func() {
		// Once the blob exists its lock file is garbage; removing it is safe
		// (see package lockfile).
		if _, ok, _ := s.Stat(d); ok {
			lock.Remove()
		} else {
			lock.Release()
		}
	}()
	// Someone may have finished it while we waited for the lock.
	if r, ok, err := s.present(d, opts.Size); err != nil || ok {
		if ok {
			progress(Cached, r.Size, r.Size)
		}
		return r, err
	}

	res, err := s.fetchLocked(ctx, d, fetch, opts, progress)
	var mismatch *resumeMismatchError
	if errors.As(err, &mismatch) {
		// A resumed partial that does not verify may be a torn write from a
		// crash; it was deleted, so one fresh attempt is worth it.
		res, err = s.fetchLocked(ctx, d, fetch, opts, progress)
	}
	if err != nil {
		return Result{}, err
	}
	progress(Done, res.Size, res.Size)
	return res, nil
}

func (s *Store) present(d v1.Hash, want int64) (Result, bool, error) {
	size, ok, err := s.Stat(d)
	if err != nil || !ok {
		return Result{}, false, err
	}
	if want >= 0 && size != want {
		return Result{}, false, fmt.Errorf("%w: blob %s is %d bytes in the cache but the descriptor says %d; the manifest is inconsistent",
			errdefs.ErrBadImage, d, size, want)
	}
	return Result{Cached: true, Size: size}, true, nil
}

type resumeMismatchError struct{ err error }

func (e *resumeMismatchError) Error() string { return e.err.Error() }
func (e *resumeMismatchError) Unwrap() error { return e.err }

// fetchLocked downloads d into its partial file and commits it. The caller
// holds d's lock.
func (s *Store) fetchLocked(ctx context.Context, d v1.Hash, fetch Fetcher, opts IngestOptions, progress func(State, int64, int64)) (Result, error) {
	partial := s.partialPath(d)
	f, err := os.OpenFile(partial, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return Result{}, fmt.Errorf("create download file for %s: %w", d, err)
	}
	keep := true // keep the partial for a later resume unless it is known bad
	defer func() {
		// An empty partial is worth nothing to a resume.
		if fi, err := f.Stat(); err == nil && fi.Size() == 0 {
			keep = false
		}
		f.Close()
		if !keep {
			os.Remove(partial)
		}
	}()
	have, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return Result{}, fmt.Errorf("download file for %s: %w", d, err)
	}
	if opts.Size >= 0 && have > opts.Size {
		if err := f.Truncate(0); err != nil {
			return Result{}, fmt.Errorf("reset download file for %s: %w", d, err)
		}
		if have, err = f.Seek(0, io.SeekStart); err != nil {
			return Result{}, err
		}
	}
	resumed := have

	h := sha256.New()
	sink := io.Writer(h)
	var check *checker
	if opts.Check != nil {
		check = startCheck(opts.Check)
		sink = io.MultiWriter(h, check)
		defer check.abort()
	}
	// Re-read what an earlier attempt left, so hash and check see everything.
	if have > 0 {
		if _, err := io.Copy(sink, io.NewSectionReader(f, 0, have)); err != nil {
			return Result{}, s.failCheck(check, fmt.Errorf("re-read partial download of %s: %w", d, err))
		}
	}
	progress(Downloading, have, opts.Size)

	buf := make([]byte, copyBuf)
	done := have
	for attempt := 0; ; attempt++ {
		before := done
		n, err := s.copyFrom(ctx, fetch, f, sink, buf, done, opts.Size, progress)
		done += n
		if err == nil {
			break
		}
		var cerr *checkFailed
		if errors.As(err, &cerr) {
			keep = false
			return Result{}, cerr.err
		}
		// A stream that broke after making progress is resumed from where it
		// stopped; anything else is final.
		if ctx.Err() != nil || done == before || attempt >= 3 || errors.Is(err, errTooLong) {
			if errors.Is(err, errTooLong) {
				keep = false
			}
			return Result{}, s.failCheck(check, err)
		}
	}
	if opts.Size >= 0 && done != opts.Size {
		keep = false
		return Result{}, s.failCheck(check, fmt.Errorf("%w: blob %s: got %d bytes, the descriptor says %d", errdefs.ErrDigestMismatch, d, done, opts.Size))
	}
	progress(Verifying, done, opts.Size)
	got := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
	if got != d {
		keep = false
		err := fmt.Errorf("%w: blob %s: content hashes to %s; the source served corrupt or different content, nothing was cached", errdefs.ErrDigestMismatch, d, got)
		s.failCheck(check, err)
		if resumed > 0 {
			return Result{}, &resumeMismatchError{err}
		}
		return Result{}, err
	}
	if check != nil {
		if err := check.finish(); err != nil {
			keep = false
			return Result{}, err
		}
	}
	if err := s.commit(f, partial, d); err != nil {
		return Result{}, err
	}
	return Result{Size: done, Resumed: resumed}, nil
}

var errTooLong = errors.New("source sent more bytes than the descriptor declares")

type checkFailed struct{ err error }

func (e *checkFailed) Error() string { return e.err.Error() }

// copyFrom streams content from offset into f and sink. It returns the number
// of new bytes written.
func (s *Store) copyFrom(ctx context.Context, fetch Fetcher, f *os.File, sink io.Writer, buf []byte, offset, size int64, progress func(State, int64, int64)) (int64, error) {
	rc, start, err := fetch(ctx, offset)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	if start > offset || start < 0 {
		return 0, fmt.Errorf("source started at byte %d, asked for %d", start, offset)
	}
	if skip := offset - start; skip > 0 {
		if _, err := io.CopyN(io.Discard, rc, skip); err != nil {
			return 0, fmt.Errorf("skip %d bytes already downloaded: %w", skip, err)
		}
	}
	var r io.Reader = rc
	if size >= 0 {
		// One byte more than allowed, to detect an over-long response.
		r = io.LimitReader(rc, size-offset+1)
	}
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		m, rerr := r.Read(buf)
		if m > 0 {
			if size >= 0 && offset+n+int64(m) > size {
				return n, fmt.Errorf("%w: %w", errdefs.ErrDigestMismatch, errTooLong)
			}
			if _, err := f.Write(buf[:m]); err != nil {
				return n, fmt.Errorf("write download file: %w", err)
			}
			n += int64(m)
			if _, err := sink.Write(buf[:m]); err != nil {
				var cerr *checkFailed
				if errors.As(err, &cerr) {
					return n, err
				}
				return n, &checkFailed{err}
			}
			progress(Downloading, offset+n, size)
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, fmt.Errorf("read: %w", rerr)
		}
	}
}

// failCheck stops a running check and returns err.
func (s *Store) failCheck(c *checker, err error) error {
	if c != nil {
		c.abort()
	}
	return err
}

func (s *Store) commit(f *os.File, partial string, d v1.Hash) error {
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync blob %s: %w", d, err)
	}
	if err := f.Chmod(0o444); err != nil {
		return fmt.Errorf("chmod blob %s: %w", d, err)
	}
	if err := os.Rename(partial, s.Path(d)); err != nil {
		return fmt.Errorf("commit blob %s: %w", d, err)
	}
	return syncDir(filepath.Dir(s.Path(d)))
}

// Put stores small content already in memory (manifests, configs) after
// checking it hashes to d. Concurrent Puts of one digest are harmless: each
// writes its own temporary file and renames identical bytes into place.
func (s *Store) Put(d v1.Hash, data []byte) error {
	if err := checkDigest(d); err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); got != d.Hex {
		return fmt.Errorf("%w: content addressed as %s hashes to sha256:%s", errdefs.ErrDigestMismatch, d, got)
	}
	if _, ok, err := s.Stat(d); err != nil || ok {
		return err
	}
	return WriteFileAtomic(s.TmpDir(), s.Path(d), 0o444, func(w io.Writer) error {
		_, err := io.Copy(w, bytes.NewReader(data))
		return err
	})
}

// PutFile makes the complete file tmp (in TmpDir, written and hashed by the
// caller: a blob this process produced, such as a committed layer) blob d,
// by rename. The caller has computed d while writing tmp; the file is synced
// before it becomes visible. If blob d is present already tmp is removed.
func (s *Store) PutFile(d v1.Hash, tmp string) error {
	if err := checkDigest(d); err != nil {
		return err
	}
	if _, ok, err := s.Stat(d); err != nil || ok {
		os.Remove(tmp)
		return err
	}
	f, err := os.Open(tmp)
	if err != nil {
		return fmt.Errorf("blob %s: %w", d, err)
	}
	defer f.Close()
	if err := s.commit(f, tmp, d); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// WriteFileAtomic writes a file through a temporary file in tmpDir, fsyncs
// it and renames it to dst, so dst is either absent or complete.
func WriteFileAtomic(tmpDir, dst string, mode os.FileMode, write func(io.Writer) error) error {
	f, err := os.CreateTemp(tmpDir, "put-"+strings.ReplaceAll(filepath.Base(dst), "*", "")+"-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := write(f); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dst, err)
	}
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("chmod %s: %w", dst, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", dst, err)
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return fmt.Errorf("commit %s: %w", dst, err)
	}
	ok = true
	return syncDir(filepath.Dir(dst))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}

// NewDigester returns a hash for computing sha256 digests as v1.Hash.
func NewDigester() hash.Hash { return sha256.New() }

// Digest converts a finished sha256 hash into a v1.Hash.
func Digest(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
}
