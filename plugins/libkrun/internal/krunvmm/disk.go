package krunvmm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/boxctl/boxctl/sdk"
)

// checkDisk refuses a disk libkrun must not be given. libkrun opens a qcow2
// file's backing files itself, by the names written in the files, and
// probes no format only when one is recorded; so a qcow2 disk is passed
// only when each file's recorded backing name is exactly the next file of
// the spec's chain (validated by the core to lie in its store) with its
// format recorded, and the chain ends where the spec's does.
func checkDisk(i int, d sdk.DiskSpec) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("spec.Disks[%d]: "+format+": %w", append(append([]any{i}, args...), sdk.ErrInvalidArgument)...)
	}
	files := append([]sdk.ChainFile{{Path: d.Path, Format: d.Format}}, d.BackingChain...)
	for j, f := range files {
		what := f.Path
		if j > 0 {
			what = fmt.Sprintf("BackingChain[%d] (%s)", j-1, f.Path)
		}
		if !knownFormat(f.Format) {
			return bad("%s: format %q: libkrun takes raw and qcow2", what, f.Format)
		}
		st, err := os.Stat(f.Path)
		if err != nil || !st.Mode().IsRegular() {
			return bad("%s: not a disk file: %v", what, err)
		}
		var next *sdk.ChainFile
		if j+1 < len(files) {
			next = &files[j+1]
		}
		if f.Format == "raw" {
			if next != nil {
				return bad("%s is raw, which has no backing file, but the chain goes on to %s", what, next.Path)
			}
			continue
		}
		name, format, err := qcow2Backing(f.Path)
		if err != nil {
			return bad("%s: %v", what, err)
		}
		switch {
		case name == "" && next == nil:
		case name == "":
			return bad("%s has no backing file, but the spec's chain goes on to %s", what, next.Path)
		case next == nil:
			return bad("%s names backing file %q, which the spec's chain does not list: libkrun would open it", what, name)
		default:
			if !filepath.IsAbs(name) {
				name = filepath.Join(filepath.Dir(f.Path), name)
			}
			if filepath.Clean(name) != filepath.Clean(next.Path) {
				return bad("%s names backing file %q, but the spec's chain has %s there: libkrun opens the name in the file, so it must be the chain's", what, name, next.Path)
			}
			if format != next.Format {
				return bad("%s records backing format %q for %s, want %q: libkrun must not probe a backing file's format", what, format, next.Path, next.Format)
			}
		}
	}
	return nil
}

// qcow2 header fields (big endian) and the backing-format extension.
const (
	qcow2Magic         = 0x514649fb
	extEnd             = 0
	extBackingFormat   = 0xe2792aca
	maxBackingNameSize = 1023
)

// qcow2Backing reads a qcow2 file's backing file name and recorded
// backing format ("" when there is none).
func qcow2Backing(path string) (name, format string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	hdr := make([]byte, 104)
	if _, err := io.ReadFull(f, hdr[:72]); err != nil {
		return "", "", errors.New("not a qcow2 file (short header)")
	}
	if binary.BigEndian.Uint32(hdr) != qcow2Magic {
		return "", "", errors.New("not a qcow2 file")
	}
	version := binary.BigEndian.Uint32(hdr[4:])
	off, size := binary.BigEndian.Uint64(hdr[8:]), binary.BigEndian.Uint32(hdr[16:])
	hdrLen := uint64(72)
	if version >= 3 {
		if _, err := io.ReadFull(f, hdr[72:104]); err != nil {
			return "", "", errors.New("short qcow2 v3 header")
		}
		hdrLen = uint64(binary.BigEndian.Uint32(hdr[100:]))
	}
	if off != 0 && size > 0 {
		if size > maxBackingNameSize {
			return "", "", fmt.Errorf("backing file name of %d bytes", size)
		}
		b := make([]byte, size)
		if _, err := f.ReadAt(b, int64(off)); err != nil {
			return "", "", fmt.Errorf("backing file name: %w", err)
		}
		name = string(b)
	}
	// Header extensions follow the header, up to the first cluster.
	pos := int64(hdrLen)
	for range 64 {
		var eh [8]byte
		if _, err := f.ReadAt(eh[:], pos); err != nil {
			break
		}
		typ, l := binary.BigEndian.Uint32(eh[:]), binary.BigEndian.Uint32(eh[4:])
		if typ == extEnd || l > 1<<16 {
			break
		}
		if typ == extBackingFormat {
			b := make([]byte, l)
			if _, err := f.ReadAt(b, pos+8); err != nil {
				return "", "", fmt.Errorf("backing format: %w", err)
			}
			format = string(b)
		}
		pos += 8 + int64((l+7)&^7)
	}
	return name, format, nil
}
