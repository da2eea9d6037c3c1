// Package filetype names the kind of a file that is not a regular file, for
// errors that refuse one: a disk, a blob or an archive named by untrusted
// input may be a FIFO (whose open or read would hang), a device or a
// directory.
package filetype

import "io/fs"

// Name says what kind of file mode m is, as "a named pipe (FIFO)", "a
// directory", ...
func Name(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	case m.IsDir():
		return "a directory"
	case m.IsRegular():
		return "a regular file"
	}
	return "a special file (" + m.String() + ")"
}
