package source

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	"github.com/boxctl/boxctl/internal/filetype"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/errdefs"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/ref"
)

// openRegular opens a file of a local image source (an OCI layout's marker,
// index or blob, a docker archive) for reading and refuses anything but a
// regular file (symlinks to one are fine; the content is verified by
// digest anyway). Opening a FIFO for reading would block until some
// process writes to it, and a device may never end: either would hang a
// pull until its call timeout. The open itself does not block
// (O_NONBLOCK), which on a regular file has no other effect.
// A missing file is reported as fs.ErrNotExist, for the caller to word.
func openRegular(path, what string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		if errors.Is(err, syscall.ENXIO) {
			// What open(2) says for a socket.
			return nil, fmt.Errorf("%w: %s (%s) is a socket, not a regular file", errdefs.ErrBadImage, what, path)
		}
		return nil, fmt.Errorf("open %s (%s): %w", what, path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat %s (%s): %w", what, path, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%w: %s (%s) is %s, not a regular file; it cannot be read as image content: replace it with the file itself",
			errdefs.ErrBadImage, what, path, filetype.Name(fi.Mode()))
	}
	return f, nil
}

// readRegular reads a whole regular file of at most limit bytes.
func readRegular(path, what string, limit int64) ([]byte, error) {
	f, err := openRegular(path, what)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s (%s): %w", what, path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: %s (%s) is larger than %d bytes", errdefs.ErrBadImage, what, path, limit)
	}
	return b, nil
}

// CheckArchive says whether a docker-archive: reference names a readable
// regular file, without reading the archive.
func CheckArchive(r ref.Reference) error {
	f, err := openRegular(r.Path, "docker archive")
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: docker archive %s does not exist: check the path (write it with `docker save -o FILE IMAGE`)", errdefs.ErrNotFound, r.Path)
	}
	if err != nil {
		return err
	}
	return f.Close()
}
