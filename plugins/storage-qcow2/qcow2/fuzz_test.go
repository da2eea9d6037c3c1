package qcow2

import "testing"

// FuzzOpen feeds arbitrary bytes to the header and metadata parser, the
// reader and Validate. None may panic, hang, or allocate beyond a small
// multiple of the input. The seed corpus in testdata/fuzz/FuzzOpen holds
// small images made by qemu-img and by this package, and truncated and
// corrupted variants (regenerate with go run ./testdata/genseeds).
func FuzzOpen(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		m := memFile(data)
		size := int64(len(data))
		verr := validate(m, size, ValidateOptions{})
		img, err := newImage(m, size, OpenOptions{L2CacheBytes: 4 << 20})
		if err != nil {
			if verr == nil {
				t.Fatalf("Validate accepted an image Open rejects: %v", err)
			}
			return
		}
		buf := make([]byte, 256<<10)
		img.ReadAt(buf, 0)
		if s := img.Size(); s > int64(len(buf)) {
			img.ReadAt(buf, s-int64(len(buf)))
			img.ReadAt(buf, s/2)
		}
		limit := min(img.Size(), 64<<20)
		ext, err := img.Extents(0, limit)
		if err == nil {
			var pos int64
			for _, e := range ext {
				if e.Offset != pos || e.Length <= 0 {
					t.Fatalf("extents do not tile [0,%d): %v", limit, ext)
				}
				pos += e.Length
			}
			if pos != limit {
				t.Fatalf("extents cover %d of %d bytes", pos, limit)
			}
		}
		img.ChainExtents(0, limit)
		if verr == nil && img.Size() <= 8<<20 {
			// A validated image with plain (uncompressed) clusters must
			// read without error.
			whole := make([]byte, img.Size())
			if _, err := img.ReadAt(whole, 0); err != nil && !isInflateError(err) {
				t.Fatalf("validated image fails to read: %v", err)
			}
		}
		img.Close()
	})
}
