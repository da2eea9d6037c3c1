package boxarchive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"
	"time"
)

func TestRoundTripThroughAPipe(t *testing.T) {
	src := t.TempDir()
	disk := append(randomBytes(t, 1<<20), make([]byte, 3<<20)...)
	snap := bytes.Repeat([]byte{7}, 2<<20)
	layout, digest := testLayout(t)
	box := testBox()
	box.Image.Digest = digest

	w := NewWriter(t.TempDir())
	ctx := context.Background()
	if err := w.AddDisk(ctx, writeFile(t, src, "disk", disk), 4<<20); err != nil {
		t.Fatal(err)
	}
	created := time.Unix(1700000100, 0).UTC()
	if err := w.AddSnapshot(ctx, writeFile(t, src, "snap", snap), 4<<20, Snapshot{Name: "before upgrade", CreatedAt: created}); err != nil {
		t.Fatal(err)
	}
	if err := w.AddImage(ctx, layout, digest); err != nil {
		t.Fatal(err)
	}
	// The writer cannot seek: stream through a pipe into the reader.
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(w.WriteTo(ctx, pw, box, time.Now()))
	}()
	r, err := NewReader(pr, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	m := r.Manifest()
	if m.Format != FormatName || m.Version != Version || !reflect.DeepEqual(m.Box, box) || len(m.Members) != 3 {
		t.Fatalf("manifest %+v", m)
	}
	if mem := m.Members[0]; mem.Kind != KindDisk || mem.Size != int64(len(disk)) || mem.SHA256 != sha(disk) || mem.VirtualSize != 4<<20 || mem.CompressedSize >= mem.Size {
		t.Fatalf("disk member %+v", mem)
	}
	dir := t.TempDir()
	ex, err := r.Extract(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(ex.Disk.Path); !bytes.Equal(got, disk) {
		t.Fatal("disk differs after the round trip")
	}
	if len(ex.Snapshots) != 1 || ex.Snapshots[0].Member.Snapshot.Name != "before upgrade" || !ex.Snapshots[0].Member.Snapshot.CreatedAt.Equal(created) {
		t.Fatalf("snapshots %+v", ex.Snapshots)
	}
	if got, _ := os.ReadFile(ex.Snapshots[0].Path); !bytes.Equal(got, snap) {
		t.Fatal("snapshot differs after the round trip")
	}
	if ex.Image == nil {
		t.Fatal("no image")
	}
	for _, rel := range []string{"oci-layout", "index.json", "blobs/sha256/" + digest[7:]} {
		want, _ := os.ReadFile(filepath.Join(layout, rel))
		got, err := os.ReadFile(filepath.Join(ex.Image.Path, rel))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("image layout file %s differs: %v", rel, err)
		}
	}
	if err := ex.Remove(); err != nil {
		t.Fatal(err)
	}
	if names := dirEntries(t, dir); len(names) != 0 {
		t.Fatalf("Remove left %v", names)
	}
}

// TestLargeSparseRoundTrip: a 200 MiB disk that is mostly holes streams
// through quickly and comes out sparse again.
func TestLargeSparseRoundTrip(t *testing.T) {
	src := filepath.Join(t.TempDir(), "big")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	const size = 200 << 20
	marks := map[int64][]byte{0: randomBytes(t, 4096), 77 << 20: randomBytes(t, 1<<20), size - 8192: randomBytes(t, 8192)}
	for off, b := range marks {
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	w := NewWriter(t.TempDir())
	defer w.Close()
	ctx := context.Background()
	if err := w.AddDisk(ctx, src, size); err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(w.WriteTo(ctx, pw, testBox(), time.Now())) }()
	counted := &countingReader{r: pr}
	r, err := NewReader(counted, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	ex, err := r.Extract(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if counted.n > 4<<20 {
		t.Errorf("the archive of a 200 MiB disk holding 1.1 MiB of data is %d bytes", counted.n)
	}
	fi, err := os.Stat(ex.Disk.Path)
	if err != nil || fi.Size() != size {
		t.Fatalf("extracted disk: %v, %v", fi, err)
	}
	if alloc := fi.Sys().(*syscall.Stat_t).Blocks * 512; alloc > 8<<20 {
		t.Errorf("extracted disk allocates %d bytes; want it sparse", alloc)
	}
	want, _ := fileSHA(src)
	got, _ := fileSHA(ex.Disk.Path)
	if want != got {
		t.Fatal("the large disk differs after the round trip")
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func fileSHA(p string) ([32]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return [32]byte{}, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return [32]byte{}, err
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out, nil
}

func TestWriterRefusesWhatReadersRefuse(t *testing.T) {
	ctx := context.Background()
	w := NewWriter(t.TempDir())
	defer w.Close()
	if err := w.WriteTo(ctx, io.Discard, testBox(), time.Now()); !errors.Is(err, ErrManifest) {
		t.Fatalf("archive without a disk: %v", err)
	}
	if err := w.AddDisk(ctx, writeFile(t, t.TempDir(), "d", []byte("x")), 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := w.AddDisk(ctx, writeFile(t, t.TempDir(), "d", []byte("x")), 1<<20); err == nil {
		t.Fatal("a second disk was accepted")
	}
	bad := testBox()
	bad.Name = "../etc"
	if err := w.WriteTo(ctx, io.Discard, bad, time.Now()); !errors.Is(err, ErrManifest) {
		t.Fatalf("bad box name: %v", err)
	}
	layout, _ := testLayout(t)
	if err := os.Symlink("/etc/passwd", filepath.Join(layout, "blobs", "sha256", "link")); err != nil {
		t.Fatal(err)
	}
	if err := w.AddImage(ctx, layout, testBox().Image.Digest); err == nil {
		t.Fatal("an image layout with a symlink was accepted")
	}
}

func TestExtractRefusesToRunTwice(t *testing.T) {
	r, err := NewReader(bytes.NewReader(minimalArchive(t)), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Extract(context.Background(), t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Extract(context.Background(), t.TempDir()); err == nil {
		t.Fatal("a second Extract succeeded")
	}
}

func TestExtractHonoursContext(t *testing.T) {
	archive, _ := fullArchive(t)
	r, err := NewReader(bytes.NewReader(archive), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dir := t.TempDir()
	if _, err := r.Extract(ctx, dir); !errors.Is(err, context.Canceled) {
		t.Fatalf("Extract with a cancelled context: %v", err)
	}
	if names := dirEntries(t, dir); len(names) != 0 {
		t.Fatalf("a cancelled extract left %v", names)
	}
}
