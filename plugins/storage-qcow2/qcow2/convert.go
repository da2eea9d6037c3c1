package qcow2

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sync"
)

// ConvertOptions configure Convert.
type ConvertOptions struct {
	// Format of the output: "qcow2" (default) or "raw".
	Format string
	// ClusterSize of a qcow2 output (default 64 KiB).
	ClusterSize int
	// SourceFormat is "qcow2", "raw" or "" to probe.
	SourceFormat string
	// Progress, if set, is called after each chunk with the bytes of the
	// virtual disk processed so far and the total.
	Progress func(done, total int64)
	// NoSync skips the final fsync of the output (what qemu-img convert
	// does by default, with its cache=unsafe target): faster, but the
	// output is not durable until the caller syncs it.
	NoSync bool
}

// convertChunk is the unit of reading and writing during Convert.
const convertChunk = 4 << 20

// Convert copies the guest-visible contents of src (a whole backing chain
// flattened) into a new standalone image at dst, which must not exist.
// Only ranges that hold data are read, and all-zero blocks are not
// written, so the output is sparse: holes stay holes (unallocated
// clusters in qcow2, file holes in raw). On error dst is removed.
func Convert(ctx context.Context, src, dst string, opts ConvertOptions) error {
	if err := convert(ctx, src, dst, opts); err != nil {
		return fmt.Errorf("convert %s to %s: %w", src, dst, err)
	}
	return nil
}

type convertSink interface {
	WriteAt(p []byte, off int64) (int, error)
	Close() error
}

type rawSink struct {
	f      *os.File
	noSync bool
}

func (s rawSink) WriteAt(p []byte, off int64) (int, error) { return s.f.WriteAt(p, off) }
func (s rawSink) Close() error {
	if !s.noSync {
		if err := s.f.Sync(); err != nil {
			s.f.Close()
			return err
		}
	}
	return s.f.Close()
}

func convert(ctx context.Context, src, dst string, opts ConvertOptions) (err error) {
	format := opts.Format
	if format == "" {
		format = FormatQcow2
	}
	if format != FormatQcow2 && format != FormatRaw {
		return fmt.Errorf("%w: output format %q (want qcow2 or raw)", ErrUnsupported, format)
	}
	if opts.SourceFormat != "" && opts.SourceFormat != FormatQcow2 && opts.SourceFormat != FormatRaw {
		return fmt.Errorf("%w: source format %q", ErrUnsupported, opts.SourceFormat)
	}
	in, _, err := openSource(src, opts.SourceFormat)
	if err != nil {
		return err
	}
	defer in.Close()
	size := in.Size()

	var sink convertSink
	var gran int64
	switch format {
	case FormatRaw:
		f, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return err
		}
		sink, gran = rawSink{f: f, noSync: opts.NoSync}, 4096
		if err := f.Truncate(size); err != nil {
			f.Close()
			os.Remove(dst)
			return err
		}
	default:
		img, err := Create(dst, CreateOptions{Size: size, ClusterSize: opts.ClusterSize})
		if err != nil {
			return err
		}
		img.noSync = opts.NoSync
		sink, gran = img, img.ClusterSize()
	}
	closed := false
	defer func() {
		if !closed {
			sink.Close()
		}
		if err != nil {
			os.Remove(dst)
		}
	}()

	var pieces []Extent
	addPiece := func(e Extent) error {
		if e.Kind != ExtentData {
			return nil
		}
		lo := e.Offset / gran * gran
		hi := min(size, roundUpI(e.Offset+e.Length, gran))
		if n := len(pieces); n > 0 && pieces[n-1].Offset+pieces[n-1].Length >= lo {
			last := &pieces[n-1]
			last.Length = max(last.Length, hi-last.Offset)
			return nil
		}
		pieces = append(pieces, Extent{Offset: lo, Length: hi - lo, Kind: ExtentData})
		return nil
	}
	if err := in.chainExtents(0, size, 0, addPiece); err != nil {
		return err
	}
	if err := copyPieces(ctx, in, sink, pieces, gran, size, opts.Progress); err != nil {
		return err
	}
	closed = true
	return sink.Close()
}

// openSource opens a conversion source with its chain.
func openSource(path, format string) (layer, string, error) {
	l, format, err := openLayer(path, format, 0, nil)
	if err != nil {
		return nil, "", err
	}
	return l, format, nil
}

type chunk struct {
	off  int64
	buf  *[]byte
	n    int
	runs [][2]int // non-zero byte ranges within buf[:n]
	err  error
}

// copyPieces reads data pieces in one goroutine (read + zero detection)
// and writes them in another, so reading and writing overlap.
func copyPieces(ctx context.Context, in layer, out convertSink, pieces []Extent, gran, total int64, progress func(int64, int64)) error {
	chunkSize := max(int64(convertChunk), gran)
	pool := sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}
	zero := make([]byte, gran)
	ch := make(chan chunk, 4)
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		// Stop the reader and wait for it, so that nothing reads from in
		// after we return.
		cancel()
		for c := range ch {
			pool.Put(c.buf)
		}
	}()

	go func() {
		defer close(ch)
		for _, p := range pieces {
			for off := p.Offset; off < p.Offset+p.Length; off += chunkSize {
				if ctx.Err() != nil {
					return
				}
				n := int(min(chunkSize, p.Offset+p.Length-off))
				bp := pool.Get().(*[]byte)
				c := chunk{off: off, buf: bp, n: n}
				buf := (*bp)[:n]
				if _, err := in.ReadAt(buf, off); err != nil {
					c.err = err
				} else {
					c.runs = nonZeroRuns(buf, zero)
				}
				select {
				case ch <- c:
				case <-ctx.Done():
					return
				}
				if c.err != nil {
					return
				}
			}
		}
	}()

	var done int64
	for c := range ch {
		if c.err != nil {
			return fmt.Errorf("read at %d: %w", c.off, c.err)
		}
		buf := (*c.buf)[:c.n]
		for _, r := range c.runs {
			if _, err := out.WriteAt(buf[r[0]:r[1]], c.off+int64(r[0])); err != nil {
				return err
			}
		}
		pool.Put(c.buf)
		done = c.off + int64(c.n)
		if progress != nil {
			progress(done, total)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if progress != nil && done != total {
		progress(total, total)
	}
	return nil
}

// nonZeroRuns splits buf into blocks of len(zero) bytes and returns the
// ranges made of blocks that are not all zero.
func nonZeroRuns(buf, zero []byte) [][2]int {
	g := len(zero)
	var runs [][2]int
	start := -1
	for i := 0; i < len(buf); i += g {
		end := min(i+g, len(buf))
		isZero := bytes.Equal(buf[i:end], zero[:end-i])
		switch {
		case !isZero && start < 0:
			start = i
		case isZero && start >= 0:
			runs = append(runs, [2]int{start, i})
			start = -1
		}
	}
	if start >= 0 {
		runs = append(runs, [2]int{start, len(buf)})
	}
	return runs
}
