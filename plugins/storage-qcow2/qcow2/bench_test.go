package qcow2

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// benchChain makes base (48 MiB data) <- top (16 MiB data) with 64 KiB
// clusters.
func benchChain(b *testing.B) string {
	b.Helper()
	dir := b.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	img := mustCreate(b, base, CreateOptions{Size: 256 << 20})
	mustWrite(b, img, randBytes(1, 48<<20), 0)
	mustClose(b, img)
	top := filepath.Join(dir, "top.qcow2")
	img = mustCreate(b, top, CreateOptions{BackingFile: base, BackingFormat: "qcow2"})
	mustWrite(b, img, randBytes(2, 16<<20), 40<<20)
	mustClose(b, img)
	return top
}

func BenchmarkReadAtChain(b *testing.B) {
	img := openRO(b, benchChain(b))
	buf := make([]byte, 1<<20)
	b.SetBytes(64 << 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for off := int64(0); off < 64<<20; off += int64(len(buf)) {
			if _, err := img.ReadAt(buf, off); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func BenchmarkWriteAtNewClusters(b *testing.B) {
	for _, bs := range []int{4 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("block%dk", bs>>10), func(b *testing.B) {
			dir := b.TempDir()
			data := randBytes(3, bs)
			b.SetBytes(32 << 20)
			for i := 0; i < b.N; i++ {
				p := filepath.Join(dir, fmt.Sprint(i))
				img := mustCreate(b, p, CreateOptions{Size: 32 << 20})
				img.noSync = true // measure the write path, not the disk
				for off := int64(0); off < 32<<20; off += int64(bs) {
					mustWrite(b, img, data, off)
				}
				mustClose(b, img)
				os.Remove(p)
			}
		})
	}
}

func BenchmarkConvert(b *testing.B) {
	top := benchChain(b)
	dir := b.TempDir()
	b.SetBytes(64 << 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out := filepath.Join(dir, "out.qcow2")
		if err := Convert(context.Background(), top, out, ConvertOptions{NoSync: true}); err != nil {
			b.Fatal(err)
		}
		os.Remove(out)
	}
}

func BenchmarkCreateOverlay(b *testing.B) {
	top := benchChain(b)
	dir := b.TempDir()
	for i := 0; i < b.N; i++ {
		p := filepath.Join(dir, fmt.Sprint(i))
		img, err := Create(p, CreateOptions{BackingFile: top, BackingFormat: "qcow2"})
		if err != nil {
			b.Fatal(err)
		}
		mustClose(b, img)
	}
}

func BenchmarkValidate(b *testing.B) {
	p := filepath.Join(b.TempDir(), "v.qcow2")
	img := mustCreate(b, p, CreateOptions{Size: 1 << 30, ClusterSize: 4096})
	mustWrite(b, img, randBytes(1, 32<<20), 0)
	mustClose(b, img)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := Validate(p, ValidateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}
