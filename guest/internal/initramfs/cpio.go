// Package initramfs builds the guest initramfs: a cpio ("newc") archive with the agent as
// /init and the kernel modules it loads, optionally compressed. Output is deterministic
// (fixed mtimes, sorted entries) so unchanged inputs give byte-identical archives.
package initramfs

import (
	"bufio"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Entry is one file of the archive.
type Entry struct {
	// Path inside the archive, without a leading slash ("init", "lib/modules/...").
	Path string
	// Mode is the full st_mode (type and permission bits), e.g. ModeDir|0o755.
	Mode uint32
	// Data is the content of a regular file, or the target of a symlink.
	Data []byte
	// Major and Minor are the device numbers of character and block devices.
	Major, Minor uint32
}

// File type bits of st_mode.
const (
	ModeDir     = 0o040000
	ModeRegular = 0o100000
	ModeSymlink = 0o120000
	ModeChar    = 0o020000
)

// Archive is a set of entries; parent directories are added automatically.
type Archive struct {
	entries map[string]Entry
}

// NewArchive returns an empty archive.
func NewArchive() *Archive { return &Archive{entries: map[string]Entry{}} }

// Add adds (or replaces) an entry and any missing parent directories (mode 0755).
func (a *Archive) Add(e Entry) {
	e.Path = strings.Trim(e.Path, "/")
	if e.Path == "" {
		return
	}
	a.entries[e.Path] = e
	for dir := parentDir(e.Path); dir != ""; dir = parentDir(dir) {
		if _, ok := a.entries[dir]; !ok {
			a.entries[dir] = Entry{Path: dir, Mode: ModeDir | 0o755}
		}
	}
}

func parentDir(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return ""
	}
	return p[:i]
}

// WriteTo writes the archive in cpio newc format (sorted, so directories precede their
// contents), ending with the TRAILER!!! record.
func (a *Archive) WriteTo(w io.Writer) (int64, error) {
	paths := make([]string, 0, len(a.entries))
	for p := range a.entries {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	cw := &countWriter{w: bufio.NewWriterSize(w, 1<<20)}
	for i, p := range paths {
		if err := writeRecord(cw, a.entries[p], uint32(i+1)); err != nil {
			return cw.n, err
		}
	}
	if err := writeRecord(cw, Entry{Path: "TRAILER!!!"}, 0); err != nil {
		return cw.n, err
	}
	return cw.n, cw.w.(*bufio.Writer).Flush()
}

func writeRecord(w io.Writer, e Entry, ino uint32) error {
	nlink := uint32(1)
	if e.Mode&0o170000 == ModeDir {
		nlink = 2
	}
	name := e.Path + "\x00"
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, e.Mode, 0, 0, nlink, 0, len(e.Data), 0, 0, e.Major, e.Minor, len(name), 0)
	if _, err := io.WriteString(w, hdr+name+pad(len(hdr)+len(name))); err != nil {
		return err
	}
	if len(e.Data) == 0 {
		return nil
	}
	if _, err := w.Write(e.Data); err != nil {
		return err
	}
	_, err := io.WriteString(w, pad(len(e.Data)))
	return err
}

// pad returns the NULs that align n to 4 bytes.
func pad(n int) string { return strings.Repeat("\x00", (4-n%4)%4) }

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
