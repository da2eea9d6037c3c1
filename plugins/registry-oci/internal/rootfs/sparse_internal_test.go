package rootfs

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// Zeros written over data already in the file must reach the file; only
// zeros where nothing was written yet may be skipped.
func TestSparseFileNeverSkipsOverwrites(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s, err := newSparseFile(f)
	if err != nil {
		t.Fatal(err)
	}
	ones := bytes.Repeat([]byte{1}, 3*holeBlock)
	zeros := make([]byte, 3*holeBlock)
	mustWrite := func(b []byte) {
		t.Helper()
		if n, err := s.Write(b); err != nil || n != len(b) {
			t.Fatalf("write: %d, %v", n, err)
		}
	}
	mustWrite(ones)        // [0, 3 blocks): data
	mustWrite(zeros)       // [3, 6): skipped, a hole
	mustWrite([]byte("x")) // 6 blocks + 1 byte: the data end moves on
	if _, err := s.Seek(holeBlock, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	mustWrite(zeros[:holeBlock]) // over data: must be written
	if _, err := s.Seek(10*holeBlock, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	mustWrite(zeros) // past the end: skipped, extends the size
	if err := s.finish(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 13*holeBlock)
	copy(want, ones)
	clear(want[holeBlock : 2*holeBlock])
	want[6*holeBlock] = 'x'
	if !bytes.Equal(got, want) {
		t.Fatalf("file content differs: %d bytes, want %d", len(got), len(want))
	}
}
