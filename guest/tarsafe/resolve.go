package tarsafe

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// scope says how a path is confined to a directory.
type scope int

const (
	// scopeBeneath refuses any resolution that leaves the directory (".." above it, absolute
	// symlinks, symlinks pointing outside): ErrEscape.
	scopeBeneath scope = iota
	// scopeInRoot treats the directory as "/" (like chroot): ".." at the top stays there and
	// absolute symlinks restart at the directory.
	scopeInRoot
)

// maxSymlinks matches the kernel's limit on symlinks followed in one lookup.
const maxSymlinks = 40

// resolver opens paths confined to a directory file descriptor. It uses openat2(2) with
// RESOLVE_BENEATH / RESOLVE_IN_ROOT where the kernel has it (Linux 5.6+) and otherwise walks
// the path one component at a time with O_NOFOLLOW, expanding symlinks itself.
type resolver struct {
	// forceWalk skips openat2 (tests exercise the fallback with it).
	forceWalk bool
}

// open opens p (relative to dirfd, confined by sc) with flags. followLast says whether a
// symlink in the last component is followed; if not, flags should include O_PATH to get a
// descriptor of the symlink itself (as with openat2 and O_NOFOLLOW).
func (r resolver) open(dirfd int, p string, flags int, sc scope, followLast bool) (int, error) {
	flags |= unix.O_CLOEXEC
	if !followLast {
		flags |= unix.O_NOFOLLOW
	}
	if !r.forceWalk {
		how := unix.OpenHow{Flags: uint64(flags), Resolve: unix.RESOLVE_NO_MAGICLINKS}
		if sc == scopeBeneath {
			how.Resolve |= unix.RESOLVE_BENEATH
		} else {
			how.Resolve |= unix.RESOLVE_IN_ROOT
		}
		rel := strings.TrimLeft(p, "/")
		if rel == "" {
			rel = "."
		}
		for range 8 {
			fd, err := unix.Openat2(dirfd, rel, &how)
			switch {
			case err == nil:
				return fd, nil
			case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
				// A concurrent rename raced with ".." resolution; the kernel asks for a retry.
				continue
			case errors.Is(err, unix.EXDEV):
				return -1, fmt.Errorf("%s: %w", p, ErrEscape)
			case errors.Is(err, unix.ENOSYS):
				return r.walk(dirfd, p, flags, sc, followLast)
			default:
				return -1, &pathError{op: "open", path: p, err: err}
			}
		}
		return -1, &pathError{op: "open", path: p, err: unix.EAGAIN}
	}
	return r.walk(dirfd, p, flags, sc, followLast)
}

// walk is the fallback for kernels without openat2: it resolves component by component with
// O_PATH|O_NOFOLLOW, keeping a descriptor per level so ".." never consults the path again.
func (r resolver) walk(dirfd int, p string, flags int, sc scope, followLast bool) (int, error) {
	top, err := unix.Openat(dirfd, ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &pathError{op: "open", path: ".", err: err}
	}
	stack := []int{top}
	defer func() {
		for _, fd := range stack {
			unix.Close(fd)
		}
	}()
	comps := splitPath(p)
	links := 0
	for {
		cur := stack[len(stack)-1]
		if len(comps) == 0 {
			// The path named a directory already on the stack (".", "a/..", "").
			fd, err := unix.Openat(cur, ".", flags&^unix.O_NOFOLLOW, 0)
			if err != nil {
				return -1, &pathError{op: "open", path: p, err: err}
			}
			return fd, nil
		}
		c := comps[0]
		comps = comps[1:]
		last := len(comps) == 0
		if c == ".." {
			if len(stack) == 1 {
				if sc == scopeBeneath {
					return -1, fmt.Errorf("%s: %w", p, ErrEscape)
				}
				continue
			}
			unix.Close(cur)
			stack = stack[:len(stack)-1]
			continue
		}
		fd, err := unix.Openat(cur, c, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, &pathError{op: "open", path: p, err: err}
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return -1, &pathError{op: "stat", path: p, err: err}
		}
		if st.Mode&unix.S_IFMT == unix.S_IFLNK && (!last || followLast) {
			target, err := readlinkFd(fd)
			unix.Close(fd)
			if err != nil {
				return -1, &pathError{op: "readlink", path: p, err: err}
			}
			if links++; links > maxSymlinks {
				return -1, &pathError{op: "open", path: p, err: unix.ELOOP}
			}
			if strings.HasPrefix(target, "/") {
				if sc == scopeBeneath {
					return -1, fmt.Errorf("%s: %w", p, ErrEscape)
				}
				for len(stack) > 1 {
					unix.Close(stack[len(stack)-1])
					stack = stack[:len(stack)-1]
				}
			}
			comps = append(splitPath(target), comps...)
			continue
		}
		if last {
			unix.Close(fd)
			out, err := unix.Openat(cur, c, flags, 0)
			if err != nil {
				return -1, &pathError{op: "open", path: p, err: err}
			}
			return out, nil
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			unix.Close(fd)
			return -1, &pathError{op: "open", path: p, err: unix.ENOTDIR}
		}
		stack = append(stack, fd)
	}
}

func readlinkFd(fd int) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Readlinkat(fd, "", buf)
		if err != nil {
			return "", err
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		buf = make([]byte, 2*len(buf))
	}
}

func splitPath(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

// openDir opens the directory p beneath/in dirfd.
func (r resolver) openDir(dirfd int, p string, sc scope) (int, error) {
	return r.open(dirfd, p, unix.O_RDONLY|unix.O_DIRECTORY, sc, true)
}

// mkdirAll makes sure directory p exists under dirfd (creating missing parents with perm)
// and returns a descriptor for it.
func (r resolver) mkdirAll(dirfd int, p string, sc scope, perm uint32) (int, error) {
	fd, err := r.openDir(dirfd, p, sc)
	if err == nil || !errors.Is(err, unix.ENOENT) {
		return fd, err
	}
	clean := path.Clean("/" + p)
	if clean == "/" {
		return -1, err
	}
	parent, base := path.Split(clean)
	pfd, err := r.mkdirAll(dirfd, parent, sc, perm)
	if err != nil {
		return -1, err
	}
	defer unix.Close(pfd)
	if err := unix.Mkdirat(pfd, base, perm); err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, &pathError{op: "mkdir", path: p, err: err}
	}
	return r.openDir(dirfd, p, sc)
}

// pathError reports a failed operation on a path relative to the extraction directory.
type pathError struct {
	op, path string
	err      error
}

func (e *pathError) Error() string { return e.op + " " + e.path + ": " + e.err.Error() }
func (e *pathError) Unwrap() error { return e.err }
