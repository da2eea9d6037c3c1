// Package tarsafe owns confined tar handling for copies into and out of boxes: extracting an
// untrusted tar stream without ever writing outside the destination directory, and archiving
// a path of a root filesystem (the box root in the guest, the host's / on the host) with
// symlinks resolved inside that root.
//
// Both sides of `boxctl cp` use it: the guest agent for Upload/Download, and the host when it
// extracts a tar that came out of a box (a hostile guest can put "../" names, absolute names
// and symlinks pointing anywhere into that tar). On the host the caller also sets
// ExtractOptions.SkipSpecialFiles and ClearSetID, so that a guest cannot plant device nodes
// or set-id programs there. Regular files are written sparse on both sides: aligned blocks of
// zeros become holes.
//
// Confinement relies on openat2(2) with RESOLVE_BENEATH / RESOLVE_IN_ROOT (Linux 5.6+), with
// a component-by-component O_NOFOLLOW walk as a fallback on older kernels. Symlinks found in
// the destination or created by earlier entries are never followed outside it.
package tarsafe

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

var (
	// ErrEscape means an entry's name or hard-link target resolves outside the destination
	// (through "..", an absolute symlink or a symlink pointing outside).
	ErrEscape = errors.New("path escapes the destination")
	// ErrExists means an entry would replace an existing file and overwriting was not asked
	// for, or would replace a directory with a non-directory.
	ErrExists = errors.New("destination already exists")
	// ErrUnsupported means a tar entry has a type that cannot be extracted.
	ErrUnsupported = errors.New("unsupported tar entry type")
	// ErrInvalidTar means the stream is not a readable tar archive.
	ErrInvalidTar = errors.New("invalid tar stream")
)

// ExtractOptions control Extract and ExtractInRoot.
type ExtractOptions struct {
	// Overwrite replaces existing files, symlinks and special files of the same name.
	// Existing directories are always merged into.
	Overwrite bool
	// PreserveOwner applies the uid/gid recorded in the tar (needs privilege); otherwise new
	// files belong to the extracting user.
	PreserveOwner bool
	// SkipSpecialFiles leaves device nodes and FIFOs out instead of creating them, reporting
	// each to OnSkip. Extraction on the host of anything that came from a guest sets it: a
	// guest can mknod a world-writable node for any host device. The zero value creates them,
	// which is right inside a VM, where devices only reach the VM's own hardware.
	SkipSpecialFiles bool
	// ClearSetID drops the setuid and setgid bits of every extracted file and directory, so
	// that nothing from the tar can run with another user's (the owner's, root's) identity.
	ClearSetID bool
	// OnSkip, if set, is called for each entry SkipSpecialFiles leaves out.
	OnSkip func(Skipped)
}

// Skipped is an entry an extraction left out.
type Skipped struct {
	// Name is the entry's path relative to the destination.
	Name string
	// Kind says what it was: "block device 8:0", "character device 1:3", "FIFO".
	Kind string
}

func (s Skipped) String() string { return s.Name + ": " + s.Kind }

// Stats counts what an extraction wrote.
type Stats struct {
	// Entries is the number of tar entries extracted.
	Entries uint64
	// Bytes is the number of regular-file content bytes written (holes included).
	Bytes uint64
	// Skipped is the number of entries left out (see ExtractOptions.SkipSpecialFiles).
	Skipped uint64
}

// EntryError names the tar entry an extraction stopped at.
type EntryError struct {
	Name string
	Err  error
}

func (e *EntryError) Error() string { return fmt.Sprintf("tar entry %q: %v", e.Name, e.Err) }
func (e *EntryError) Unwrap() error { return e.Err }

// Extract extracts the tar stream r into the host directory dest (created if missing).
// Nothing is ever written outside dest.
func Extract(ctx context.Context, r io.Reader, dest string, opts ExtractOptions) (Stats, error) {
	return extract(ctx, resolver{}, r, dest, opts)
}

func extract(ctx context.Context, res resolver, r io.Reader, dest string, opts ExtractOptions) (Stats, error) {
	if dest == "" {
		return Stats{}, errors.New("tarsafe: empty destination directory")
	}
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return Stats{}, fmt.Errorf("create destination: %w", err)
	}
	fd, err := unix.Open(dest, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return Stats{}, fmt.Errorf("open destination %s: %w", dest, err)
	}
	defer unix.Close(fd)
	x := &extractor{res: res, dirfd: fd, opts: opts}
	return x.run(ctx, r)
}

// ExtractInRoot extracts the tar stream r into directory dir of the filesystem tree rooted at
// root, as if chrooted there: symlinks in dir resolve inside root. dir is created (with
// parents, mode 0755) if missing. Entries are confined to dir.
func ExtractInRoot(ctx context.Context, r io.Reader, root, dir string, opts ExtractOptions) (Stats, error) {
	if dir == "" {
		return Stats{}, errors.New("tarsafe: empty destination directory")
	}
	rootfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return Stats{}, fmt.Errorf("open root %s: %w", root, err)
	}
	defer unix.Close(rootfd)
	var res resolver
	fd, err := res.mkdirAll(rootfd, dir, scopeInRoot, 0o755)
	if err != nil {
		return Stats{}, fmt.Errorf("destination %s: %w", dir, err)
	}
	defer unix.Close(fd)
	x := &extractor{res: res, dirfd: fd, opts: opts}
	return x.run(ctx, r)
}

type dirMeta struct {
	name string
	hdr  *tar.Header
}

type extractor struct {
	res   resolver
	dirfd int
	opts  ExtractOptions
	dirs  []dirMeta
	stats Stats
}

func (x *extractor) run(ctx context.Context, r io.Reader) (Stats, error) {
	tr := tar.NewReader(ctxReader{ctx: ctx, r: r})
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if ctx.Err() != nil {
				return x.stats, ctx.Err()
			}
			return x.stats, fmt.Errorf("%w: %w", ErrInvalidTar, err)
		}
		if err := x.entry(ctx, hdr, tr); err != nil {
			return x.stats, &EntryError{Name: hdr.Name, Err: err}
		}
	}
	// Directory metadata last: creating entries inside a directory changes its mtime, and a
	// read-only mode would stop later entries.
	for i := len(x.dirs) - 1; i >= 0; i-- {
		d := x.dirs[i]
		if err := x.finishDir(d); err != nil {
			return x.stats, &EntryError{Name: d.hdr.Name, Err: err}
		}
	}
	return x.stats, nil
}

// cleanName turns a tar entry name into a path relative to the destination, refusing names
// that climb above it. Leading slashes are dropped (as tar does). "" means the destination.
func cleanName(n string) (string, error) {
	if strings.ContainsRune(n, 0) {
		return "", errors.New("name contains a NUL byte")
	}
	c := path.Clean(strings.TrimLeft(n, "/"))
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", ErrEscape
	}
	if c == "." {
		return "", nil
	}
	return c, nil
}

func (x *extractor) entry(ctx context.Context, hdr *tar.Header, r io.Reader) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if name == "" {
		if hdr.Typeflag == tar.TypeDir {
			// "./" names the destination itself; its metadata stays as it is.
			x.stats.Entries++
			return nil
		}
		return errors.New("non-directory entry names the destination itself")
	}
	parent, base := path.Split(name)
	pfd, err := x.res.mkdirAll(x.dirfd, parent, scopeBeneath, 0o755)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)

	mode := uint32(hdr.Mode) & 0o7777
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := x.makeDir(pfd, base); err != nil {
			return err
		}
		x.dirs = append(x.dirs, dirMeta{name: name, hdr: hdr})
	case tar.TypeReg: // tar.Reader turns legacy TypeRegA entries into TypeReg (or TypeDir)
		if err := x.clear(pfd, base); err != nil {
			return err
		}
		n, err := x.writeFile(ctx, pfd, base, hdr, r)
		x.stats.Bytes += uint64(n)
		if err != nil {
			return err
		}
	case tar.TypeSymlink:
		if err := x.clear(pfd, base); err != nil {
			return err
		}
		// The target is stored verbatim: it is never followed while extracting.
		if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
			return fmt.Errorf("symlink: %w", err)
		}
		if err := x.applyMeta(pfd, base, hdr, 0, true); err != nil {
			return err
		}
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("hard link target %q: %w", hdr.Linkname, err)
		}
		if target == "" {
			return fmt.Errorf("hard link target %q names the destination itself", hdr.Linkname)
		}
		tparent, tbase := path.Split(target)
		tfd, err := x.res.openDir(x.dirfd, tparent, scopeBeneath)
		if err != nil {
			return fmt.Errorf("hard link target %q: %w", hdr.Linkname, err)
		}
		defer unix.Close(tfd)
		if err := x.clear(pfd, base); err != nil {
			return err
		}
		if err := unix.Linkat(tfd, tbase, pfd, base, 0); err != nil {
			return fmt.Errorf("hard link to %q: %w", hdr.Linkname, err)
		}
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		if x.opts.SkipSpecialFiles {
			x.stats.Skipped++
			if x.opts.OnSkip != nil {
				x.opts.OnSkip(Skipped{Name: name, Kind: specialKind(hdr)})
			}
			return nil
		}
		if err := x.clear(pfd, base); err != nil {
			return err
		}
		kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
		dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
		if err := unix.Mknodat(pfd, base, kind|x.mode(mode), int(dev)); err != nil {
			if errors.Is(err, unix.EPERM) {
				return fmt.Errorf("mknod %s: %w (creating device files needs root)", specialKind(hdr), err)
			}
			return fmt.Errorf("mknod %s: %w", specialKind(hdr), err)
		}
		if err := x.applyMeta(pfd, base, hdr, x.mode(mode), false); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: type %q", ErrUnsupported, hdr.Typeflag)
	}
	x.stats.Entries++
	return nil
}

func (x *extractor) makeDir(pfd int, base string) error {
	err := unix.Mkdirat(pfd, base, 0o700)
	if err == nil || !errors.Is(err, unix.EEXIST) {
		if err != nil {
			return fmt.Errorf("mkdir: %w", err)
		}
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return nil
	}
	if !x.opts.Overwrite {
		return ErrExists
	}
	if err := unix.Unlinkat(pfd, base, 0); err != nil {
		return fmt.Errorf("replace: %w", err)
	}
	if err := unix.Mkdirat(pfd, base, 0o700); err != nil {
		return fmt.Errorf("mkdir: %w", err)
	}
	return nil
}

// clear makes room for a non-directory entry: nothing to do if the name is free; an existing
// non-directory is removed only when overwriting; a directory is never replaced.
func (x *extractor) clear(pfd int, base string) error {
	var st unix.Stat_t
	err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("%w: is a directory", ErrExists)
	}
	if !x.opts.Overwrite {
		return ErrExists
	}
	if err := unix.Unlinkat(pfd, base, 0); err != nil {
		return fmt.Errorf("replace: %w", err)
	}
	return nil
}

func (x *extractor) writeFile(ctx context.Context, pfd int, base string, hdr *tar.Header, r io.Reader) (int64, error) {
	fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return 0, fmt.Errorf("create: %w", err)
	}
	f := os.NewFile(uintptr(fd), base)
	defer f.Close()
	n, err := writeSparse(f, r)
	if err != nil {
		if ctx.Err() != nil {
			return n, ctx.Err()
		}
		return n, err
	}
	if x.opts.PreserveOwner {
		if err := f.Chown(hdr.Uid, hdr.Gid); err != nil {
			return n, chownErr(hdr, err)
		}
	}
	// After chown, which clears set-id bits.
	if err := f.Chmod(fileMode(x.mode(uint32(hdr.Mode)))); err != nil {
		return n, fmt.Errorf("chmod: %w", err)
	}
	if err := unix.UtimesNanoAt(pfd, base, times(hdr), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return n, fmt.Errorf("set times: %w", err)
	}
	return n, f.Close()
}

// writeSparse copies r into the new, empty file f, seeking over every aligned block of zeros
// instead of writing it, so that holes stay holes (a tar carries a sparse file's holes as
// zeros). The final ftruncate gives a file that ends in a hole its size. Read errors (a
// truncated tar) are ErrInvalidTar.
func writeSparse(f *os.File, r io.Reader) (int64, error) {
	blk := int64(4096)
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err == nil && st.Blksize >= 512 && st.Blksize <= 1<<20 && st.Blksize&(st.Blksize-1) == 0 {
		blk = int64(st.Blksize)
	}
	buf := make([]byte, max(128<<10, blk))
	zero := make([]byte, blk)
	var off int64
	for {
		n, rerr := fill(r, buf)
		// buf holds whole blocks and off is a multiple of len(buf): every block checked
		// below is aligned in the file.
		for i := 0; i < n; {
			j := min(i+int(blk), n)
			if bytes.Equal(buf[i:j], zero[:j-i]) {
				i = j
				continue
			}
			// Extend the run of data blocks and write it in one go.
			for j < n {
				k := min(j+int(blk), n)
				if bytes.Equal(buf[j:k], zero[:k-j]) {
					break
				}
				j = k
			}
			if _, err := f.WriteAt(buf[i:j], off+int64(i)); err != nil {
				return off + int64(i), fmt.Errorf("write: %w", err)
			}
			i = j
		}
		off += int64(n)
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return off, fmt.Errorf("%w: %w", ErrInvalidTar, rerr)
		}
	}
	if err := f.Truncate(off); err != nil {
		return off, fmt.Errorf("set size: %w", err)
	}
	return off, nil
}

// fill reads from r until buf is full or r ends; io.EOF means r ended (cleanly) after n bytes.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// mode is the permission mode an entry gets: the tar's, without set-id bits if asked.
func (x *extractor) mode(m uint32) uint32 {
	m &= 0o7777
	if x.opts.ClearSetID {
		m &^= unix.S_ISUID | unix.S_ISGID
	}
	return m
}

func chownErr(hdr *tar.Header, err error) error {
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("chown %d:%d: %w (keeping the owners recorded in the tar needs root)", hdr.Uid, hdr.Gid, err)
	}
	return fmt.Errorf("chown %d:%d: %w", hdr.Uid, hdr.Gid, err)
}

func specialKind(hdr *tar.Header) string {
	switch hdr.Typeflag {
	case tar.TypeBlock:
		return fmt.Sprintf("block device %d:%d", hdr.Devmajor, hdr.Devminor)
	case tar.TypeChar:
		return fmt.Sprintf("character device %d:%d", hdr.Devmajor, hdr.Devminor)
	default:
		return "FIFO"
	}
}

// applyMeta sets owner, mode and times on a non-regular entry by name (never following it).
func (x *extractor) applyMeta(pfd int, base string, hdr *tar.Header, mode uint32, isLink bool) error {
	if x.opts.PreserveOwner {
		if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return chownErr(hdr, err)
		}
	}
	if !isLink {
		// mknod applied the umask; fchmodat without AT_SYMLINK_NOFOLLOW is safe here because
		// the entry was just created as a non-symlink.
		if err := unix.Fchmodat(pfd, base, mode, 0); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	if err := unix.UtimesNanoAt(pfd, base, times(hdr), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

func (x *extractor) finishDir(d dirMeta) error {
	fd, err := x.res.openDir(x.dirfd, d.name, scopeBeneath)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), d.name)
	defer f.Close()
	if x.opts.PreserveOwner {
		if err := f.Chown(d.hdr.Uid, d.hdr.Gid); err != nil {
			return chownErr(d.hdr, err)
		}
	}
	if err := f.Chmod(fileMode(x.mode(uint32(d.hdr.Mode)))); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	ts := times(d.hdr)
	if err := unix.UtimesNanoAt(fd, ".", ts, 0); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

func fileMode(m uint32) os.FileMode {
	fm := os.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		fm |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		fm |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		fm |= os.ModeSticky
	}
	return fm
}

func times(hdr *tar.Header) []unix.Timespec {
	mt := hdr.ModTime
	if mt.IsZero() {
		mt = time.Unix(0, 0)
	}
	at := hdr.AccessTime
	if at.IsZero() {
		at = mt
	}
	return []unix.Timespec{unix.NsecToTimespec(at.UnixNano()), unix.NsecToTimespec(mt.UnixNano())}
}

// ctxReader stops a long extraction when the context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
