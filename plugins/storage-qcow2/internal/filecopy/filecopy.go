// Package filecopy copies files as cheaply as the filesystem allows: a
// reflink (FICLONE, O(1) and sharing blocks) where supported, else a
// sparse copy that keeps holes (SEEK_DATA/SEEK_HOLE with
// copy_file_range), else a plain read/write copy that still leaves
// all-zero blocks as holes.
package filecopy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Method says how a file was copied.
type Method int

const (
	// MethodReflink: the copy shares the source's blocks (FICLONE).
	MethodReflink Method = iota + 1
	// MethodSparse: data ranges were copied, holes preserved.
	MethodSparse
	// MethodPlain: the file was read and written in full (zero blocks
	// were still left as holes).
	MethodPlain
)

func (m Method) String() string {
	switch m {
	case MethodReflink:
		return "reflink"
	case MethodSparse:
		return "sparse"
	case MethodPlain:
		return "plain"
	}
	return fmt.Sprintf("Method(%d)", int(m))
}

// chunk bounds each copy step, so cancellation is noticed promptly.
const chunk = 8 << 20

// errNoSeekData means the filesystem cannot report holes.
var errNoSeekData = errors.New("SEEK_DATA not supported")

// Copy copies the regular file src to dst, which must not exist, with
// src's permission bits, and syncs dst. It returns the method used. On
// error (including cancellation of ctx) dst is removed.
func Copy(ctx context.Context, dst, src string) (Method, error) {
	m, err := copyFile(ctx, dst, src, MethodReflink)
	if err != nil {
		return 0, fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return m, nil
}

// copyFile tries methods from first on (tests start lower to exercise
// the fallbacks).
func copyFile(ctx context.Context, dst, src string, first Method) (m Method, err error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	// Non-blocking, so that a FIFO put where src was is refused below
	// instead of waiting for a writer.
	in, err := os.OpenFile(src, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return 0, err
	}
	if !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("%s is not a regular file", src)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fi.Mode().Perm())
	if err != nil {
		return 0, err
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	size := fi.Size()

	m = first
	if m == MethodReflink {
		if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
			return m, out.Sync()
		}
		// Not supported here (EOPNOTSUPP, EXDEV, EINVAL, ...): dst is
		// still empty, fall back.
		m = MethodSparse
	}
	if m == MethodSparse {
		err = copySparse(ctx, out, in, size)
		if errors.Is(err, errNoSeekData) {
			m = MethodPlain
		} else if err != nil {
			return 0, err
		}
	}
	if m == MethodPlain {
		if err := copyPlain(ctx, out, in, size); err != nil {
			return 0, err
		}
	}
	if err := out.Truncate(size); err != nil {
		return 0, err
	}
	return m, out.Sync()
}

func copySparse(ctx context.Context, out, in *os.File, size int64) error {
	fd := int(in.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole remains
		}
		if err != nil {
			if off == 0 && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)) {
				return errNoSeekData
			}
			return fmt.Errorf("seek data at %d: %w", off, err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole at %d: %w", data, err)
		}
		hole = min(hole, size)
		if err := copyRange(ctx, out, in, data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// copyRange copies n bytes at off with copy_file_range (in-kernel), or
// pread/pwrite where that is unavailable.
func copyRange(ctx context.Context, out, in *os.File, off, n int64) error {
	useKernel := true
	var buf []byte
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		step := min(n, chunk)
		if useKernel {
			roff, woff := off, off
			c, err := unix.CopyFileRange(int(in.Fd()), &roff, int(out.Fd()), &woff, int(step), 0)
			if err == nil && c > 0 {
				off += int64(c)
				n -= int64(c)
				continue
			}
			if err != nil && !errors.Is(err, unix.EXDEV) && !errors.Is(err, unix.EINVAL) &&
				!errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EOPNOTSUPP) {
				return fmt.Errorf("copy_file_range at %d: %w", off, err)
			}
			useKernel = false // also on c == 0 (unexpected EOF): use read/write
		}
		if buf == nil {
			buf = make([]byte, chunk)
		}
		r, err := in.ReadAt(buf[:step], off)
		if r == 0 && err != nil {
			if err == io.EOF {
				return nil // file shrank: what is left reads as a hole
			}
			return err
		}
		if _, err := out.WriteAt(buf[:r], off); err != nil {
			return err
		}
		off += int64(r)
		n -= int64(r)
	}
	return nil
}

// copyPlain reads everything, writing only blocks that are not all zero.
func copyPlain(ctx context.Context, out, in *os.File, size int64) error {
	const block = 64 << 10
	buf := make([]byte, chunk)
	zero := make([]byte, block)
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		r, err := in.ReadAt(buf[:min(int64(len(buf)), size-off)], off)
		if r == 0 {
			if err == io.EOF || err == nil {
				return nil
			}
			return err
		}
		for i := 0; i < r; i += block {
			b := buf[i:min(i+block, r)]
			if bytes.Equal(b, zero[:len(b)]) {
				continue
			}
			if _, err := out.WriteAt(b, off+int64(i)); err != nil {
				return err
			}
		}
		off += int64(r)
	}
	return nil
}
