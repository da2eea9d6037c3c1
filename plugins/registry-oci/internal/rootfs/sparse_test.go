package rootfs_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"os"
	"testing"

	ti "github.com/boxctl/boxctl/plugins/registry-oci/internal/testimages"
)

// part is a piece of a test file: n bytes of b repeated (b empty: zeros).
type part struct {
	b string
	n int64
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func partReader(p part) io.Reader {
	if p.b == "" {
		return io.LimitReader(zeroReader{}, p.n)
	}
	return io.LimitReader(repeatReader{b: []byte(p.b)}, p.n)
}

type repeatReader struct {
	b   []byte
	pos int
}

func (r repeatReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = r.b[(r.pos+i)%len(r.b)]
	}
	return len(p), nil
}

func content(parts []part) io.Reader {
	var rs []io.Reader
	for _, p := range parts {
		rs = append(rs, partReader(p))
	}
	return io.MultiReader(rs...)
}

func size(parts []part) (n int64) {
	for _, p := range parts {
		n += p.n
	}
	return n
}

// Runs of zeros in files become holes in the image file instead of
// written blocks; the content reads back the same through an independent
// ext4 reader.
func TestZeroRunsBecomeHoles(t *testing.T) {
	files := map[string][]part{
		"zeros": {{"", 256 << 20}},
		"mixed": {{"A", 1 << 20}, {"", 64<<20 + 123}, {"tail", 4096*3 + 7}, {"", 5000}},
		"small": {{"hello\n", 6}},
	}
	order := []string{"zeros", "mixed", "small"}
	path := build(t, func(ctx context.Context, w io.Writer) error {
		tw := tar.NewWriter(w)
		for _, name := range order {
			ps := files[name]
			if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: size(ps), ModTime: ti.Epoch}); err != nil {
				return err
			}
			if _, err := io.Copy(tw, content(ps)); err != nil {
				return err
			}
		}
		return tw.Close()
	})
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, ps := range files {
		total += size(ps)
	}
	if fi.Size() < total {
		t.Fatalf("image is %d bytes, smaller than its %d bytes of file data", fi.Size(), total)
	}
	// The data that is not zero is 1 MiB + 12 KiB; metadata adds little.
	if a := ti.Allocated(t, path); a > 8<<20 {
		t.Errorf("image of %d MiB of mostly zero files allocates %d MiB on the host, want < 8 MiB (zeros must be holes)", total>>20, a>>20)
	}
	x := ti.OpenExt4(t, path)
	x.Fsck()
	for name, ps := range files {
		if s := x.MustStat("/" + name); s.Size != size(ps) {
			t.Errorf("%s: size %d, want %d", name, s.Size, size(ps))
		}
		want := sha256.New()
		io.Copy(want, content(ps))
		got := sha256.New()
		x.CatTo("/"+name, got)
		if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
			t.Errorf("%s: content differs from what was written", name)
		}
	}
}
