package tarsafe

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"time"

	"golang.org/x/sys/unix"
)

// ArchiveOptions control Archive.
type ArchiveOptions struct {
	// FollowSymlinks archives what symlinks point to instead of the symlinks, the archived
	// path itself included. Symlinks resolve inside the root; dangling ones, and ones leading
	// back to a directory being archived (a loop), are archived as symlinks.
	FollowSymlinks bool
	// IncludeParent names entries starting with the last element of the path ("dir/a");
	// otherwise a directory's contents are named relative to it ("a") and a single file by
	// its base name.
	IncludeParent bool
}

// Archive writes a tar of path p of the filesystem tree rooted at root to w. p is resolved as
// if chrooted at root (with root "/", as an ordinary host path). A missing p is an error
// wrapping fs.ErrNotExist.
func Archive(ctx context.Context, w io.Writer, root, p string, opts ArchiveOptions) error {
	rootfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open root %s: %w", root, err)
	}
	defer unix.Close(rootfd)

	clean := path.Clean("/" + p)
	a := &archiver{
		ctx:       ctx,
		tw:        tar.NewWriter(w),
		rootfd:    rootfd,
		follow:    opts.FollowSymlinks,
		hardlinks: map[devIno]string{},
		ancestors: map[devIno]bool{},
	}
	var parentfd int
	var base string
	if clean == "/" {
		parentfd, err = unix.Dup(rootfd)
		base = "."
	} else {
		var dir string
		dir, base = path.Split(clean)
		parentfd, err = a.res.openDir(rootfd, dir, scopeInRoot)
	}
	if err != nil {
		return fmt.Errorf("archive %s: %w", p, asNotExist(err))
	}
	defer unix.Close(parentfd)

	st, err := a.stat(parentfd, base, clean)
	if err != nil {
		return fmt.Errorf("archive %s: %w", p, asNotExist(err))
	}
	name := ""
	if (opts.IncludeParent || st.Mode&unix.S_IFMT != unix.S_IFDIR) && clean != "/" {
		name = path.Base(clean)
	}
	if err := a.add(parentfd, base, clean, name, st); err != nil {
		return fmt.Errorf("archive %s: %w", p, err)
	}
	if err := a.tw.Close(); err != nil {
		return fmt.Errorf("archive %s: finish tar: %w", p, err)
	}
	return nil
}

type devIno struct{ dev, ino uint64 }

type archiver struct {
	ctx       context.Context
	tw        *tar.Writer
	res       resolver
	rootfd    int
	follow    bool
	hardlinks map[devIno]string
	ancestors map[devIno]bool
}

// stat looks at entry base of dirfd (whose path in the root is inRoot): the symlink itself,
// or with follow, its target resolved inside the root (a dangling symlink stays a symlink).
func (a *archiver) stat(dirfd int, base, inRoot string) (unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return st, err
	}
	if !a.follow || st.Mode&unix.S_IFMT != unix.S_IFLNK {
		return st, nil
	}
	fd, err := a.res.open(a.rootfd, inRoot, unix.O_PATH, scopeInRoot, true)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ELOOP) {
			return st, nil
		}
		return st, err
	}
	defer unix.Close(fd)
	var target unix.Stat_t
	if err := unix.Fstat(fd, &target); err != nil {
		return st, err
	}
	return target, nil
}

// open opens entry base of dirfd for reading, following it inside the root if it is a
// symlink and symlinks are followed, and checks it is still the file stat saw.
func (a *archiver) open(dirfd int, base, inRoot string, flags int, want unix.Stat_t) (*os.File, error) {
	flags |= unix.O_RDONLY | unix.O_NONBLOCK | unix.O_CLOEXEC
	var fd int
	var err error
	if a.follow {
		fd, err = a.res.open(a.rootfd, inRoot, flags, scopeInRoot, true)
	} else {
		fd, err = unix.Openat(dirfd, base, flags|unix.O_NOFOLLOW, 0)
	}
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if st.Dev != want.Dev || st.Ino != want.Ino {
		unix.Close(fd)
		return nil, errors.New("file changed while archiving")
	}
	return os.NewFile(uintptr(fd), inRoot), nil
}

func (a *archiver) add(dirfd int, base, inRoot, name string, st unix.Stat_t) error {
	if err := a.ctx.Err(); err != nil {
		return err
	}
	hdr := &tar.Header{
		Name:    name,
		Mode:    int64(st.Mode & 0o7777),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: time.Unix(st.Mtim.Unix()).Truncate(time.Second),
	}
	key := devIno{dev: uint64(st.Dev), ino: st.Ino}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return a.addDir(dirfd, base, inRoot, hdr, st, key)
	case unix.S_IFREG:
		if name == "" {
			return nil
		}
		if st.Nlink > 1 {
			if first, ok := a.hardlinks[key]; ok {
				hdr.Typeflag = tar.TypeLink
				hdr.Linkname = first
				return a.tw.WriteHeader(hdr)
			}
			a.hardlinks[key] = name
		}
		f, err := a.open(dirfd, base, inRoot, 0, st)
		if err != nil {
			return fmt.Errorf("%s: %w", inRoot, err)
		}
		defer f.Close()
		hdr.Typeflag = tar.TypeReg
		hdr.Size = st.Size
		if err := a.tw.WriteHeader(hdr); err != nil {
			return err
		}
		n, err := io.CopyN(a.tw, ctxReader{ctx: a.ctx, r: f}, st.Size)
		if err != nil {
			return fmt.Errorf("%s: read %d of %d bytes: %w", inRoot, n, st.Size, err)
		}
		return nil
	case unix.S_IFLNK:
		target, err := readlinkAt(dirfd, base)
		if err != nil {
			return fmt.Errorf("%s: %w", inRoot, err)
		}
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = target
	case unix.S_IFCHR, unix.S_IFBLK:
		hdr.Typeflag = tar.TypeChar
		if st.Mode&unix.S_IFMT == unix.S_IFBLK {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor = int64(unix.Major(st.Rdev))
		hdr.Devminor = int64(unix.Minor(st.Rdev))
	case unix.S_IFIFO:
		hdr.Typeflag = tar.TypeFifo
	default:
		// Sockets have no tar representation.
		return nil
	}
	if name == "" {
		return nil
	}
	return a.tw.WriteHeader(hdr)
}

func (a *archiver) addDir(dirfd int, base, inRoot string, hdr *tar.Header, st unix.Stat_t, key devIno) error {
	if a.ancestors[key] {
		// Reached through a symlink loop: archiving the directory again would never end, so
		// the symlink that leads back is archived as a symlink.
		var lst unix.Stat_t
		if err := unix.Fstatat(dirfd, base, &lst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("%s: %w", inRoot, err)
		}
		if lst.Mode&unix.S_IFMT != unix.S_IFLNK || hdr.Name == "" {
			return nil
		}
		return a.add(dirfd, base, inRoot, hdr.Name, lst)
	}
	a.ancestors[key] = true
	defer delete(a.ancestors, key)

	if hdr.Name != "" {
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
		if err := a.tw.WriteHeader(hdr); err != nil {
			return err
		}
	}
	d, err := a.open(dirfd, base, inRoot, unix.O_DIRECTORY, st)
	if err != nil {
		return fmt.Errorf("%s: %w", inRoot, err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("%s: read directory: %w", inRoot, err)
	}
	sort.Strings(names)
	fd := int(d.Fd())
	for _, n := range names {
		childIn := path.Join(inRoot, n)
		childName := n
		if hdr.Name != "" {
			childName = path.Join(hdr.Name, n)
		}
		cst, err := a.stat(fd, n, childIn)
		if errors.Is(err, unix.ENOENT) {
			continue // removed while archiving
		}
		if err != nil {
			return fmt.Errorf("%s: %w", childIn, err)
		}
		if err := a.add(fd, n, childIn, childName, cst); err != nil {
			return err
		}
	}
	return nil
}

func readlinkAt(dirfd int, base string) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Readlinkat(dirfd, base, buf)
		if err != nil {
			return "", err
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		buf = make([]byte, 2*len(buf))
	}
}

func asNotExist(err error) error {
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("%w: %w", os.ErrNotExist, err)
	}
	return err
}
