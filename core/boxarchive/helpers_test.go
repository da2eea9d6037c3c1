package boxarchive

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// entry is one raw tar member of a hand-built archive.
type entry struct {
	hdr  tar.Header
	data []byte
}

func testBox() Box {
	return Box{
		ID: "0123456789abcdef0123456789abcdef", Name: "web", CreatedAt: time.Unix(1700000000, 0).UTC(),
		Image: Image{Reference: "oci-layout:/images/busybox", Digest: "sha256:" + hex.EncodeToString(make([]byte, 32))},
		CPUs:  2, MemoryMiB: 512, DiskSize: 1 << 30,
		Env: []string{"A=1"}, Cmd: []string{"sh"}, WorkingDir: "/srv", User: "1000",
		Ports:  []Port{{HostPort: 8080, GuestPort: 80, Protocol: "tcp"}},
		Health: &Health{Cmd: []string{"true"}, IntervalNS: int64(time.Second), TimeoutNS: int64(time.Second), Retries: 3},
	}
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// testLayout writes a small OCI image layout whose manifest blob is the
// box's image digest's stand-in, and returns its directory and digest.
func testLayout(t testing.TB) (string, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	blob := randomBytes(t, 100<<10)
	sum := sha256.Sum256(blob)
	hx := hex.EncodeToString(sum[:])
	writeFile(t, dir, "blobs/sha256/"+hx, blob)
	writeFile(t, dir, "oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	writeFile(t, dir, "index.json", []byte(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:`+hx+`","size":102400}]}`))
	return dir, "sha256:" + hx
}

// fullArchive builds a valid archive with a disk, two snapshots and an
// image, and returns it with the files it was made from.
func fullArchive(t testing.TB) ([]byte, map[string][]byte) {
	t.Helper()
	src := t.TempDir()
	files := map[string][]byte{
		"disk":  append(randomBytes(t, 300<<10), make([]byte, 200<<10)...),
		"snap1": randomBytes(t, 70<<10),
		"snap2": bytes.Repeat([]byte("snapshot two "), 10000),
	}
	w := NewWriter(t.TempDir())
	defer w.Close()
	ctx := context.Background()
	if err := w.AddDisk(ctx, writeFile(t, src, "disk", files["disk"]), 1<<30); err != nil {
		t.Fatal(err)
	}
	for i, n := range []string{"snap1", "snap2"} {
		if err := w.AddSnapshot(ctx, writeFile(t, src, n, files[n]), 1<<30, Snapshot{Name: "s" + n[4:], CreatedAt: time.Unix(int64(1700000100+i), 0).UTC()}); err != nil {
			t.Fatal(err)
		}
	}
	layout, digest := testLayout(t)
	box := testBox()
	box.Image.Digest = digest
	if err := w.AddImage(ctx, layout, digest); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := w.WriteTo(ctx, &buf, box, time.Unix(1700000200, 0)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), files
}

// minimalArchive is a valid archive with only a small disk.
func minimalArchive(t testing.TB) []byte {
	t.Helper()
	w := NewWriter(t.TempDir())
	defer w.Close()
	ctx := context.Background()
	if err := w.AddDisk(ctx, writeFile(t, t.TempDir(), "d", randomBytes(t, 10<<10)), 1<<20); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := w.WriteTo(ctx, &buf, testBox(), time.Unix(1700000200, 0)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// splitArchive parses an archive into its raw entries and manifest.
func splitArchive(t testing.TB, b []byte) (*Manifest, []entry) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	var out []entry
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, entry{hdr: *h, data: data})
	}
	var m Manifest
	if err := json.Unmarshal(out[0].data, &m); err != nil {
		t.Fatal(err)
	}
	return &m, out[1:]
}

// joinArchive writes a manifest and raw entries as an archive. The manifest
// may be any JSON value.
func joinArchive(t testing.TB, manifest any, entries []entry) []byte {
	t.Helper()
	body, ok := manifest.([]byte)
	if !ok {
		var err error
		if body, err = json.Marshal(manifest); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	all := append([]entry{{hdr: tar.Header{Typeflag: tar.TypeReg, Name: ManifestName, Size: int64(len(body)), Mode: 0o644}, data: body}}, entries...)
	for _, e := range all {
		h := e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zstdBytes(t testing.TB, b []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithZeroFrames(true))
	if err != nil {
		t.Fatal(err)
	}
	return enc.EncodeAll(b, nil)
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// extract reads an archive into a fresh directory.
func extract(t testing.TB, archive []byte, limits Limits) (*Extracted, string, error) {
	t.Helper()
	dir := t.TempDir()
	r, err := NewReader(bytes.NewReader(archive), limits)
	if err != nil {
		return nil, dir, err
	}
	ex, err := r.Extract(context.Background(), dir)
	return ex, dir, err
}

func dirEntries(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}
