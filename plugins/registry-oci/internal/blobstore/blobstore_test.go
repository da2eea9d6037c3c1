package blobstore_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/blobstore"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/errdefs"
)

func digest(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}

func data(n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(int64(n))).Read(b)
	return b
}

// fetcher serves b from offset, counting calls.
func fetcher(b []byte, calls *atomic.Int32, honourRange bool) blobstore.Fetcher {
	return func(ctx context.Context, off int64) (io.ReadCloser, int64, error) {
		calls.Add(1)
		if !honourRange {
			off = 0
		}
		return io.NopCloser(bytes.NewReader(b[off:])), off, nil
	}
}

func TestIngestConcurrentGoroutinesFetchOnce(t *testing.T) {
	s, err := blobstore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := data(3 << 20)
	d := digest(b)
	var calls atomic.Int32
	var wg sync.WaitGroup
	var cached atomic.Int32
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := s.Ingest(context.Background(), d, fetcher(b, &calls, true), blobstore.IngestOptions{Size: int64(len(b))})
			if err != nil {
				t.Error(err)
			}
			if res.Cached {
				cached.Add(1)
			}
		}()
	}
	wg.Wait()
	if calls.Load() != 1 || cached.Load() != 7 {
		t.Errorf("%d fetches, %d cached; want 1 and 7", calls.Load(), cached.Load())
	}
	got, err := s.ReadAll(d, 4<<20)
	if err != nil || !bytes.Equal(got, b) {
		t.Errorf("content differs: %v", err)
	}
}

func TestIngestMismatchAndResume(t *testing.T) {
	dir := t.TempDir()
	s, _ := blobstore.Open(dir)
	b := data(1 << 20)
	d := digest(b)
	var calls atomic.Int32

	// Wrong content of the right size: rejected, nothing kept.
	wrong := append([]byte(nil), b...)
	wrong[100] ^= 1
	_, err := s.Ingest(context.Background(), d, fetcher(wrong, &calls, true), blobstore.IngestOptions{Size: int64(len(b))})
	if !errors.Is(err, errdefs.ErrDigestMismatch) {
		t.Fatalf("%v, want ErrDigestMismatch", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(ents) != 0 {
		t.Errorf("tmp/ keeps %d files after a mismatch", len(ents))
	}
	// Too long: rejected.
	_, err = s.Ingest(context.Background(), d, fetcher(append(b, 'x'), &calls, true), blobstore.IngestOptions{Size: int64(len(b))})
	if !errors.Is(err, errdefs.ErrDigestMismatch) {
		t.Fatalf("too long: %v", err)
	}

	// A broken stream keeps its prefix; the next ingest resumes from it.
	broken := func(ctx context.Context, off int64) (io.ReadCloser, int64, error) {
		return io.NopCloser(io.MultiReader(bytes.NewReader(b[:300000]), errReader{})), 0, nil
	}
	if _, err := s.Ingest(context.Background(), d, broken, blobstore.IngestOptions{Size: int64(len(b))}); err == nil {
		t.Fatal("broken stream succeeded")
	}
	var offsets []int64
	resume := func(ctx context.Context, off int64) (io.ReadCloser, int64, error) {
		offsets = append(offsets, off)
		return io.NopCloser(bytes.NewReader(b[off:])), off, nil
	}
	var checked int64
	res, err := s.Ingest(context.Background(), d, resume, blobstore.IngestOptions{Size: int64(len(b)), Check: func(r io.Reader) error {
		n, err := io.Copy(io.Discard, r)
		checked = n
		return err
	}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Resumed != 300000 || len(offsets) != 1 || offsets[0] != 300000 {
		t.Errorf("resumed %d from offsets %v, want 300000", res.Resumed, offsets)
	}
	if checked != int64(len(b)) {
		t.Errorf("check saw %d bytes, want all %d", checked, len(b))
	}

	// A source that cannot seek restarts; the prefix is skipped, not
	// duplicated.
	b2 := data(500000)
	d2 := digest(b2)
	s.Ingest(context.Background(), d2, func(ctx context.Context, off int64) (io.ReadCloser, int64, error) {
		return io.NopCloser(io.MultiReader(bytes.NewReader(b2[:1000]), errReader{})), 0, nil
	}, blobstore.IngestOptions{Size: int64(len(b2))})
	if _, err := s.Ingest(context.Background(), d2, fetcher(b2, &calls, false), blobstore.IngestOptions{Size: int64(len(b2))}); err != nil {
		t.Fatalf("restart without range: %v", err)
	}
}

func TestCheckRejects(t *testing.T) {
	dir := t.TempDir()
	s, _ := blobstore.Open(dir)
	b := data(2 << 20)
	d := digest(b)
	var calls atomic.Int32
	bad := errors.New("not acceptable")
	_, err := s.Ingest(context.Background(), d, fetcher(b, &calls, true), blobstore.IngestOptions{Size: int64(len(b)), Check: func(r io.Reader) error {
		io.CopyN(io.Discard, r, 1000)
		return bad
	}})
	if !errors.Is(err, bad) {
		t.Fatalf("%v, want the check's error", err)
	}
	if _, ok, _ := s.Stat(d); ok {
		t.Error("rejected blob was committed")
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(ents) != 0 {
		t.Errorf("tmp/ keeps %d files after a rejection", len(ents))
	}
}

func TestPut(t *testing.T) {
	s, _ := blobstore.Open(t.TempDir())
	if err := s.Put(digest([]byte("a")), []byte("b")); !errors.Is(err, errdefs.ErrDigestMismatch) {
		t.Errorf("%v, want ErrDigestMismatch", err)
	}
	if err := s.Put(digest([]byte("a")), []byte("a")); err != nil {
		t.Error(err)
	}
	if _, err := s.Open(digest([]byte("zz"))); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("%v, want ErrNotFound", err)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }
