package filecopy

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// makeSparse writes a 64 MiB file with three data islands and holes.
func makeSparse(t testing.TB, path string) []byte {
	t.Helper()
	const size = 64 << 20
	want := make([]byte, size)
	r := rand.New(rand.NewSource(1))
	for _, off := range []int{0, 17 << 20, size - 300000} {
		n := min(3<<20, size-off)
		r.Read(want[off : off+n])
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int{0, 17 << 20, size - 300000} {
		n := min(3<<20, size-off)
		if _, err := f.WriteAt(want[off:off+n], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	return want
}

func blocks(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks
}

// reflinkSupported probes FICLONE in dir.
func reflinkSupported(t *testing.T, dir string) bool {
	a, _ := os.Create(filepath.Join(dir, "probe-a"))
	b, _ := os.Create(filepath.Join(dir, "probe-b"))
	defer a.Close()
	defer b.Close()
	a.Write([]byte("x"))
	return unix.IoctlFileClone(int(b.Fd()), int(a.Fd())) == nil
}

func checkCopy(t *testing.T, src, dst string, want []byte, sparse bool) {
	t.Helper()
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("copy differs from source")
	}
	if sparse {
		// Holes preserved: no more blocks than the source (plus slack
		// for filesystem rounding).
		if b, s := blocks(t, dst), blocks(t, src); b > s+2048 {
			t.Fatalf("copy uses %d blocks, source %d: holes were filled", b, s)
		}
	}
	fi, _ := os.Stat(dst)
	if fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v", fi.Mode())
	}
}

func TestCopyPicksBestMethod(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	want := makeSparse(t, src)
	os.Chmod(src, 0o640)
	dst := filepath.Join(dir, "dst")
	m, err := Copy(context.Background(), dst, src)
	if err != nil {
		t.Fatal(err)
	}
	expect := MethodSparse
	if reflinkSupported(t, dir) {
		expect = MethodReflink
	}
	t.Logf("filesystem of %s: copied with %v", dir, m)
	if m != expect {
		t.Fatalf("method %v, want %v", m, expect)
	}
	checkCopy(t, src, dst, want, true)
}

func TestFallbackMethods(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	want := makeSparse(t, src)
	os.Chmod(src, 0o640)
	for _, m := range []Method{MethodSparse, MethodPlain} {
		dst := filepath.Join(dir, "dst-"+m.String())
		got, err := copyFile(context.Background(), dst, src, m)
		if err != nil {
			t.Fatal(err)
		}
		if got != m {
			t.Fatalf("method %v, want %v", got, m)
		}
		checkCopy(t, src, dst, want, true)
	}
}

func TestCopyEdgeCases(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	makeSparse(t, src)
	dst := filepath.Join(dir, "dst")
	os.WriteFile(dst, []byte("keep"), 0o644)
	if _, err := Copy(context.Background(), dst, src); !errors.Is(err, os.ErrExist) {
		t.Fatalf("existing destination: %v", err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "keep" {
		t.Fatal("existing destination overwritten")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, m := range []Method{MethodReflink, MethodSparse, MethodPlain} {
		d := filepath.Join(dir, "cancelled-"+m.String())
		if _, err := copyFile(ctx, d, src, m); !errors.Is(err, context.Canceled) {
			t.Fatalf("%v: cancelled copy: %v", m, err)
		}
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Fatalf("%v: partial copy left behind", m)
		}
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o644)
	if _, err := Copy(context.Background(), filepath.Join(dir, "empty2"), empty); err != nil {
		t.Fatal(err)
	}
	if _, err := Copy(context.Background(), filepath.Join(dir, "x"), dir); err == nil {
		t.Fatal("copying a directory succeeded")
	}
}

func BenchmarkCopy(b *testing.B) {
	dir := b.TempDir()
	src := filepath.Join(dir, "src")
	makeSparse(b, src)
	b.SetBytes(64 << 20)
	for i := 0; i < b.N; i++ {
		dst := filepath.Join(dir, "dst")
		if _, err := Copy(context.Background(), dst, src); err != nil {
			b.Fatal(err)
		}
		os.Remove(dst)
	}
}

// TestCopyFIFO: an import source swapped for a FIFO after it was validated
// is refused at once; the copy does not wait for a writer.
func TestCopyFIFO(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := Copy(context.Background(), filepath.Join(dir, "dst"), fifo)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("Copy of a FIFO: %v; want it refused as not a regular file", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Copy of a FIFO blocks")
	}
	if _, err := os.Stat(filepath.Join(dir, "dst")); !os.IsNotExist(err) {
		t.Fatalf("a refused copy left its destination: %v", err)
	}
}
