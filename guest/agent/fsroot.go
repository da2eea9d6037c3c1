package agent

import (
	"errors"
	"io"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// openInRoot opens p as if chrooted at root, so absolute symlinks inside the box resolve
// inside it. The agent itself is not chrooted: the box root is a directory of its initramfs.
func openInRoot(root, p string, flags int) (*os.File, error) {
	rootfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: root, Err: err}
	}
	defer unix.Close(rootfd)
	rel := strings.TrimLeft(path.Clean("/"+p), "/")
	if rel == "" {
		rel = "."
	}
	how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS}
	for {
		fd, err := unix.Openat2(rootfd, rel, &how)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.ENOSYS) && root == "/" {
			// Kernels before 5.6 without openat2: only the host-side root "/" can be served.
			fd, err = unix.Open(p, flags|unix.O_CLOEXEC, 0)
		}
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: p, Err: err}
		}
		return os.NewFile(uintptr(fd), p), nil
	}
}

// statInRoot stats p inside root, following symlinks inside root.
func statInRoot(root, p string) (os.FileInfo, error) {
	f, err := openInRoot(root, p, unix.O_PATH)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Stat()
}

// readFileInRoot reads a small file inside root; a missing file reads as nil, no error.
func readFileInRoot(root, p string) ([]byte, error) {
	f, err := openInRoot(root, p, unix.O_RDONLY)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 16<<20))
}
