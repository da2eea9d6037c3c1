package boxarchive

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkWriteAndExtract: a 128 MiB disk member, half random and half
// text, through AddDisk+WriteTo and NewReader+Extract.
func BenchmarkWriteAndExtract(b *testing.B) {
	dir := b.TempDir()
	var data []byte
	for len(data) < 128<<20 {
		data = append(data, randomBytes(b, 1<<20)...)
		data = append(data, bytes.Repeat([]byte("GET /api/v1/items 200 1234 user-agent box\n"), (1<<20)/42+1)[:1<<20]...)
	}
	src := writeFile(b, dir, "disk", data)
	ctx := context.Background()
	b.SetBytes(int64(len(data)))
	var archive bytes.Buffer
	b.Run("write", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for i := 0; i < b.N; i++ {
			w := NewWriter(dir)
			if err := w.AddDisk(ctx, src, 1<<30); err != nil {
				b.Fatal(err)
			}
			archive.Reset()
			if err := w.WriteTo(ctx, &archive, testBox(), time.Now()); err != nil {
				b.Fatal(err)
			}
			w.Close()
		}
	})
	b.Run("extract", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for i := 0; i < b.N; i++ {
			out := filepath.Join(dir, "out")
			os.Mkdir(out, 0o700)
			r, err := NewReader(bytes.NewReader(archive.Bytes()), Limits{})
			if err != nil {
				b.Fatal(err)
			}
			ex, err := r.Extract(ctx, out)
			if err != nil {
				b.Fatal(err)
			}
			ex.Remove()
		}
	})
}
