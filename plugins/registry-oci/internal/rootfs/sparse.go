package rootfs

import (
	"bytes"
	"errors"
	"io"
	"os"
)

// holeBlock is the granularity of holes: the ext4 block size tar2ext4
// writes, which is also the page and usual host file system block size.
const holeBlock = 4096

var zeroBlock [holeBlock]byte

// sparseFile is what tar2ext4 writes the image through. A whole aligned
// block of zeros that lands where nothing was ever written is skipped
// instead of written, so runs of zeros in file data (and the zeroed
// metadata tar2ext4 reserves) become holes in the image file: they cost no
// space on the host and read back as zeros all the same. Skipping is only
// safe where the file is known to hold zeros, which is at or past the end
// of everything written so far (the file starts empty); tar2ext4 writes
// forward and only seeks back to fill in the superblock and group
// descriptors, so in practice every zero run it writes is skippable.
type sparseFile struct {
	f    *os.File
	off  int64 // the offset the next Write or Read uses
	data int64 // end of the furthest bytes actually written
	size int64 // logical size: the furthest offset written or skipped
	// started is how far writeback has been started (see startWriteback).
	started int64
}

// writebackStep is how much newly written data starts a writeback: large
// enough that the calls cost nothing, small enough that the device is kept
// busy while the image is written.
const writebackStep = 8 << 20

func newSparseFile(f *os.File) (*sparseFile, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() != 0 {
		return nil, errors.New("the image file is not empty")
	}
	return &sparseFile{f: f}, nil
}

// Write implements io.Writer.
func (s *sparseFile) Write(p []byte) (int, error) {
	run := -1 // start in p of bytes still to be written
	for i := 0; i < len(p); {
		off := s.off + int64(i)
		n := min(len(p)-i, holeBlock-int(off%holeBlock))
		if n == holeBlock && off >= s.data && bytes.Equal(p[i:i+n], zeroBlock[:]) {
			if run >= 0 {
				if w, err := s.writeRun(p[run:i], run); err != nil {
					return s.consumed(run + w), err
				}
				run = -1
			}
			s.size = max(s.size, off+holeBlock)
		} else if run < 0 {
			run = i
		}
		i += n
	}
	if run >= 0 {
		if w, err := s.writeRun(p[run:], run); err != nil {
			return s.consumed(run + w), err
		}
	}
	return s.consumed(len(p)), nil
}

// writeRun writes b, which starts at index at of the current Write's
// buffer.
func (s *sparseFile) writeRun(b []byte, at int) (int, error) {
	off := s.off + int64(at)
	n, err := s.f.WriteAt(b, off)
	end := off + int64(n)
	s.data = max(s.data, end)
	s.size = max(s.size, end)
	if s.data-s.started >= writebackStep {
		startWriteback(s.f, s.started, s.data-s.started)
		s.started = s.data
	}
	return n, err
}

func (s *sparseFile) consumed(n int) int {
	s.off += int64(n)
	return n
}

// Read implements io.Reader (tar2ext4 asks for a ReadWriteSeeker).
func (s *sparseFile) Read(p []byte) (int, error) {
	if s.off >= s.size {
		return 0, io.EOF
	}
	if rest := s.size - s.off; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := s.f.ReadAt(p, s.off)
	if errors.Is(err, io.EOF) && s.off+int64(n) < s.size {
		// Past the last written byte: a skipped tail of zeros.
		clear(p[n:])
		n, err = len(p), nil
	}
	s.off += int64(n)
	return n, err
}

// Seek implements io.Seeker.
func (s *sparseFile) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += s.off
	case io.SeekEnd:
		offset += s.size
	default:
		return 0, errors.New("sparse image file: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("sparse image file: negative offset")
	}
	s.off = offset
	return offset, nil
}

// finish gives the file its logical size: zeros skipped at the end are
// a hole up to there.
func (s *sparseFile) finish() error {
	if s.size > s.data {
		return s.f.Truncate(s.size)
	}
	return nil
}
