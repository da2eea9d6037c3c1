// Package rootfs owns writing a flattened root filesystem (a tar stream) as a
// compact, read-only ext4 image, using hcsshim's tar2ext4 writer.
//
// tar2ext4 handles regular files, directories, symlinks, hardlinks (including
// to symlinks), device nodes, fifos, owners, modes with setuid/setgid/sticky,
// nanosecond timestamps and SCHILY.xattr PAX records. Its output carries the
// read-only compat feature, which suits a shared base disk that the guest
// mounts read-only under an overlay. Two defects are corrected after
// writing (see fixup): unset inode bitmap padding, which e2fsck reports, and
// external xattr blocks sorted with a comparison that is not a strict
// ordering, while the kernel's lookup stops early on a block it assumes is
// sorted by (name index, name length, name).
package rootfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/Microsoft/hcsshim/ext4/tar2ext4"
)

// DefaultMaxSize bounds the image size when the caller has no estimate.
const DefaultMaxSize = 16 << 30

// Options tune Build.
type Options struct {
	// MaxSize is an upper bound for the image size; tar2ext4 reserves
	// metadata for it and fails if the content does not fit. Zero means
	// DefaultMaxSize.
	MaxSize int64
}

// Stats describes a built image.
type Stats struct {
	Size int64 // bytes of the ext4 image
}

// Build writes an ext4 image of the tar stream produced by write into f,
// which must be empty. The image is a sparse file: blocks of zeros (in file
// data or in metadata) are holes, so an image full of zeros takes little
// space on the host. write runs in its own goroutine and gets the writing
// end of a pipe; its error, if any, takes precedence because it names the
// layer and entry at fault, unless it only
// reports that the ext4 writer stopped reading.
func Build(ctx context.Context, f *os.File, write func(ctx context.Context, w io.Writer) error, opts Options) (Stats, error) {
	maxSize := opts.MaxSize
	if maxSize <= 0 {
		maxSize = DefaultMaxSize
	}
	out, err := newSparseFile(f)
	if err != nil {
		return Stats{}, err
	}
	// The writer is cancelled with the ext4 writer's error as the cause, so
	// that it can return that error and not just "canceled".
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	pr, pw := io.Pipe()
	werr := make(chan error, 1)
	go func() {
		err := write(ctx, pw)
		pw.CloseWithError(err) // nil closes with EOF
		werr <- err
	}()
	// A generous read buffer keeps pipe hand-offs large.
	cerr := tar2ext4.ConvertTarToExt4(bufReader(pr), out, tar2ext4.MaximumDiskSize(maxSize))
	if cerr != nil {
		cancel(cerr)
		pr.CloseWithError(cerr)
	} else {
		// Whatever follows the end-of-archive marker must still be read for
		// the writer to finish.
		io.Copy(io.Discard, pr)
	}
	if err := <-werr; err != nil && (cerr == nil || !errors.Is(err, cerr)) {
		return Stats{}, err
	}
	if cerr != nil {
		return Stats{}, fmt.Errorf("write ext4: %w", cerr)
	}
	if err := out.finish(); err != nil {
		return Stats{}, fmt.Errorf("write ext4: %w", err)
	}
	if err := fixup(f); err != nil {
		return Stats{}, fmt.Errorf("fix up ext4 image: %w", err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return Stats{}, err
	}
	return Stats{Size: size}, nil
}

type bigBufReader struct {
	r   io.Reader
	buf []byte
	pos int
	end int
	err error
}

// bufReader is a plain read-ahead buffer: tar2ext4 wraps its input in a 4 KiB
// bufio.Reader, which would otherwise make every pipe hand-off tiny.
func bufReader(r io.Reader) io.Reader { return &bigBufReader{r: r, buf: make([]byte, 1<<20)} }

func (b *bigBufReader) Read(p []byte) (int, error) {
	if b.pos == b.end {
		if b.err != nil {
			return 0, b.err
		}
		if len(p) >= len(b.buf) {
			return b.r.Read(p)
		}
		b.pos, b.end = 0, 0
		// An empty write into the pipe arrives as an empty read; like
		// bufio, retry a few times before calling it no progress.
		for try := 0; b.end == 0 && b.err == nil && try < 100; try++ {
			b.end, b.err = b.r.Read(b.buf)
		}
		if b.end == 0 {
			err := b.err
			if err == nil {
				err = io.ErrNoProgress
			}
			return 0, err
		}
	}
	n := copy(p, b.buf[b.pos:b.end])
	b.pos += n
	return n, nil
}
