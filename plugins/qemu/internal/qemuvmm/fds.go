package qemuvmm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// peers are the launcher's ends of the socket pairs it hands QEMU.
type peers struct {
	// events is the launcher's private QMP connection (fdEvents).
	events net.Conn
	// net carries the guest's ethernet frames to the user-mode network
	// (fdNet).
	net net.Conn
}

func (p *peers) close() {
	for _, c := range []net.Conn{p.events, p.net} {
		if c != nil {
			c.Close()
		}
	}
}

// openFDs opens what specs name, in order, for QEMU, and returns the
// launcher's ends of the socket pairs among them. On error nothing stays
// open.
func openFDs(specs []fdSpec) (files []*os.File, ends peers, err error) {
	defer func() {
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			ends.close()
			files, ends = nil, peers{}
		}
	}()
	for _, s := range specs {
		var f *os.File
		switch s.Kind {
		case fdDiskRO, fdDiskRW:
			f, err = openDisk(s)
		case fdLog:
			f, err = os.OpenFile(s.Path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, 0o600)
		case fdListen:
			f, err = listenUnix(s.Path)
		case fdState:
			f, err = openState(s.Path)
		case fdVhostUser:
			f, err = connectUnix(s.Path)
		case fdEvents, fdNet:
			mine := &ends.events
			if s.Kind == fdNet {
				mine = &ends.net
			}
			if *mine != nil {
				err = fmt.Errorf("launch config: more than one %s descriptor", s.Kind)
				break
			}
			f, *mine, err = socketPair(s.Kind)
		default:
			err = fmt.Errorf("launch config: unknown descriptor kind %q", s.Kind)
		}
		if err != nil {
			return files, ends, err
		}
		files = append(files, f)
	}
	return files, ends, nil
}

// openDisk opens a disk file of a validated chain. The core passes paths
// with every symbolic link resolved, so a link met now was planted after
// the check and is refused; so is anything but a regular file (a FIFO
// would block the open, a device is not a disk file).
func openDisk(s fdSpec) (*os.File, error) {
	flags := unix.O_RDONLY
	if s.Kind == fdDiskRW {
		flags = unix.O_RDWR
	}
	flags |= unix.O_CLOEXEC | unix.O_NONBLOCK
	fd, err := unix.Openat2(unix.AT_FDCWD, s.Path, &unix.OpenHow{Flags: uint64(flags), Resolve: unix.RESOLVE_NO_SYMLINKS})
	if errors.Is(err, unix.ENOSYS) {
		fd, err = unix.Open(s.Path, flags|unix.O_NOFOLLOW, 0)
	}
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("disk file %s: the path contains a symbolic link, but boxctl validated a path without one: the file was replaced after the check; start the box again", s.Path)
	}
	if err != nil {
		return nil, fmt.Errorf("disk file %s: %w", s.Path, err)
	}
	f := os.NewFile(uintptr(fd), s.Path)
	fail := func(format string, args ...any) (*os.File, error) {
		f.Close()
		return nil, fmt.Errorf("disk file %s: "+format, append([]any{s.Path}, args...)...)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fail("%v", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fail("not a regular file (mode %o)", st.Mode)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		return fail("%v", err)
	}
	if s.Format == "qcow2" {
		if err := checkQcow2(f); err != nil {
			return fail("%v", err)
		}
	}
	return f, nil
}

// checkQcow2 refuses a qcow2 file that names an external data file: QEMU
// would open that name as it opens a backing file, and it cannot be turned
// off from the command line.
func checkQcow2(f *os.File) error {
	var h [80]byte
	if _, err := f.ReadAt(h[:], 0); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if string(h[:4]) != "QFI\xfb" {
		return errors.New("not a qcow2 file, though its chain says qcow2")
	}
	const incompatDataFile = 1 << 2
	if binary.BigEndian.Uint32(h[4:8]) >= 3 && binary.BigEndian.Uint64(h[72:80])&incompatDataFile != 0 {
		return errors.New("the qcow2 file names an external data file, which boxctl does not open; the file was not made by boxctl")
	}
	return nil
}

// listenUnix binds a listening unix socket at path for QEMU (a chardev
// server). The launcher creates it, so it lives where QEMU could not
// create files, and nobody but the launcher's user can replace it.
func listenUnix(path string) (*os.File, error) {
	_ = os.Remove(path)
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind %s: %w", path, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// socketPair returns QEMU's end and the launcher's end of a connected
// stream pair.
func socketPair(name string) (*os.File, net.Conn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	mine := os.NewFile(uintptr(fds[1]), name)
	defer mine.Close() // FileConn dups it
	c, err := net.FileConn(mine)
	if err != nil {
		unix.Close(fds[0])
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), name+"-qemu"), c, nil
}
