package agent

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/boxctl/boxctl/guest/proto/agentv1"
)

// OCI layer whiteouts (image-spec, layer.md).
const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
)

// overlayfs's own extended attributes: never part of a layer. Some mark upper-directory
// features an OCI layer cannot express.
const (
	overlayXattrPrefix = "trusted.overlay."
	xattrOpaque        = "trusted.overlay.opaque"
	xattrRedirect      = "trusted.overlay.redirect"
	xattrMetacopy      = "trusted.overlay.metacopy"
	xattrWhiteout      = "trusted.overlay.whiteout" // kernels 6.7+: a whiteout as an empty file
)

// Diff implements agentv1.AgentServer: the overlay upper directory as an OCI layer tar.
func (a *Agent) Diff(_ *agentv1.DiffRequest, stream agentv1.Agent_DiffServer) error {
	if err := a.requireRoot(); err != nil {
		return err
	}
	if a.cfg.UpperDir == "" {
		return status.Error(codes.FailedPrecondition, "diff: the box root has no overlay upper directory")
	}
	w := &chunkWriter{send: func(b []byte) error {
		return stream.Send(&agentv1.DiffResponse{Data: b})
	}, buf: make([]byte, 0, diffChunkSize), size: diffChunkSize}
	start := time.Now()
	st, err := writeDiff(stream.Context(), w, a.cfg.UpperDir, a.cfg.Generated)
	if err == nil {
		err = w.flush()
	}
	if err != nil {
		if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
			return err
		}
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return status.Errorf(codes.Canceled, "diff: %v", err)
		}
		return status.Errorf(codes.Internal, "diff: %v", err)
	}
	a.log.Debug("diff", "entries", st.entries, "bytes", w.sent, "took", time.Since(start))
	return nil
}

type diffStats struct{ entries int }

// writeDiff writes the layer tar of the overlay upper directory upper to w, leaving out the
// box-root paths in exclude ("/etc/hostname").
func writeDiff(ctx context.Context, w io.Writer, upper string, exclude []string) (diffStats, error) {
	d := &differ{
		ctx:     ctx,
		tw:      tar.NewWriter(w),
		upper:   upper,
		exclude: map[string]bool{},
		links:   map[devIno]string{},
	}
	for _, p := range exclude {
		if rel := strings.TrimLeft(path.Clean("/"+p), "/"); rel != "" {
			d.exclude[rel] = true
		}
	}
	var st unix.Stat_t
	if err := unix.Lstat(upper, &st); err != nil {
		return diffStats{}, status.Errorf(codes.FailedPrecondition, "diff: upper directory %s: %v", upper, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return diffStats{}, status.Errorf(codes.FailedPrecondition, "diff: upper directory %s is not a directory", upper)
	}
	if err := d.dir(""); err != nil {
		return d.stats, err
	}
	return d.stats, d.tw.Close()
}

type devIno struct{ dev, ino uint64 }

// differ walks an upper directory. The walk never follows symlinks; the host treats the
// result as untrusted input anyway (the guest is not trusted).
type differ struct {
	ctx     context.Context
	tw      *tar.Writer
	upper   string
	exclude map[string]bool
	links   map[devIno]string // first name archived for each multiply linked file
	stats   diffStats
}

// dir archives the entries of the directory rel ("" for the upper directory itself).
func (d *differ) dir(rel string) error {
	f, err := os.OpenFile(filepath.Join(d.upper, rel), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_DIRECTORY, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", "/"+rel, err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: read directory: %w", "/"+rel, err)
	}
	sort.Strings(names)
	for _, n := range names {
		child := path.Join(rel, n)
		if d.exclude[child] {
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(d.upper, child), &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // removed while archiving
			}
			return fmt.Errorf("/%s: %w", child, err)
		}
		if err := d.entry(child, st); err != nil {
			return err
		}
	}
	return nil
}

func (d *differ) write(hdr *tar.Header) error {
	d.stats.entries++
	return d.tw.WriteHeader(hdr)
}

// whiteout records that rel was deleted.
func (d *differ) whiteout(rel string, mtime time.Time) error {
	dir, base := path.Split(rel)
	return d.write(&tar.Header{Name: dir + whiteoutPrefix + base, Typeflag: tar.TypeReg, ModTime: mtime})
}

func (d *differ) entry(rel string, st unix.Stat_t) error {
	if err := d.ctx.Err(); err != nil {
		return err
	}
	full := filepath.Join(d.upper, rel)
	mtime := time.Unix(st.Mtim.Unix()).Truncate(time.Second)
	kind := st.Mode & unix.S_IFMT
	if kind == unix.S_IFCHR && st.Rdev == 0 {
		return d.whiteout(rel, mtime)
	}
	xattrs, err := listXattrs(full)
	if err != nil {
		return fmt.Errorf("/%s: extended attributes: %w", rel, err)
	}
	if _, ok := xattrs[xattrRedirect]; ok {
		return status.Errorf(codes.FailedPrecondition, "diff: /%s was renamed by overlayfs's redirect_dir feature, which an OCI layer cannot express", rel)
	}
	if _, ok := xattrs[xattrMetacopy]; ok {
		return status.Errorf(codes.FailedPrecondition, "diff: /%s is a metadata-only copy (overlayfs metacopy), which an OCI layer cannot express", rel)
	}
	if _, ok := xattrs[xattrWhiteout]; ok && kind == unix.S_IFREG && st.Size == 0 {
		return d.whiteout(rel, mtime)
	}
	opaque := string(xattrs[xattrOpaque]) == "y"
	hdr := &tar.Header{
		Name:    rel,
		Mode:    int64(st.Mode & 0o7777),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: mtime,
	}
	for k, v := range xattrs {
		if strings.HasPrefix(k, overlayXattrPrefix) {
			continue
		}
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords["SCHILY.xattr."+k] = string(v)
	}
	switch kind {
	case unix.S_IFDIR:
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
		if err := d.write(hdr); err != nil {
			return err
		}
		if opaque {
			if err := d.write(&tar.Header{Name: rel + "/" + opaqueMarker, Typeflag: tar.TypeReg, ModTime: mtime}); err != nil {
				return err
			}
		}
		return d.dir(rel)
	case unix.S_IFREG:
		return d.file(rel, full, hdr, st)
	case unix.S_IFLNK:
		target, err := readlink(full)
		if err != nil {
			return fmt.Errorf("/%s: %w", rel, err)
		}
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = target
	case unix.S_IFCHR, unix.S_IFBLK:
		hdr.Typeflag = tar.TypeChar
		if kind == unix.S_IFBLK {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor = int64(unix.Major(st.Rdev))
		hdr.Devminor = int64(unix.Minor(st.Rdev))
	case unix.S_IFIFO:
		hdr.Typeflag = tar.TypeFifo
	default:
		// Sockets have no tar representation (and no meaning in an image).
		return nil
	}
	return d.write(hdr)
}

func (d *differ) file(rel, full string, hdr *tar.Header, st unix.Stat_t) error {
	key := devIno{dev: uint64(st.Dev), ino: st.Ino}
	if st.Nlink > 1 {
		if first, ok := d.links[key]; ok {
			hdr.Typeflag = tar.TypeLink
			hdr.Linkname = first
			hdr.PAXRecords = nil // the link shares the first name's attributes
			return d.write(hdr)
		}
		d.links[key] = rel
	}
	fd, err := unix.Open(full, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("/%s: %w", rel, err)
	}
	f := os.NewFile(uintptr(fd), full)
	defer f.Close()
	var now unix.Stat_t
	if err := unix.Fstat(fd, &now); err != nil {
		return fmt.Errorf("/%s: %w", rel, err)
	}
	if now.Ino != st.Ino || now.Dev != st.Dev {
		return fmt.Errorf("/%s changed while the diff was taken (take it inside Quiesce/Thaw)", rel)
	}
	hdr.Typeflag = tar.TypeReg
	hdr.Size = st.Size
	if err := d.write(hdr); err != nil {
		return err
	}
	n, err := io.CopyN(d.tw, f, st.Size)
	if err != nil {
		return fmt.Errorf("/%s: read %d of %d bytes (did it change while the diff was taken? take it inside Quiesce/Thaw): %w", rel, n, st.Size, err)
	}
	return nil
}

// listXattrs reads the extended attributes of p (not following a symlink).
func listXattrs(p string) (map[string][]byte, error) {
	size, err := unix.Llistxattr(p, nil)
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil || size == 0 {
		return nil, err
	}
	buf := make([]byte, size)
	size, err = unix.Llistxattr(p, buf)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:size]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		v, err := getXattr(p, name)
		if errors.Is(err, unix.ENODATA) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out[name] = v
	}
	return out, nil
}

func getXattr(p, name string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Lgetxattr(p, name, buf)
		if errors.Is(err, unix.ERANGE) {
			sz, err := unix.Lgetxattr(p, name, nil)
			if err != nil {
				return nil, err
			}
			buf = make([]byte, sz)
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

func readlink(p string) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Readlink(p, buf)
		if err != nil {
			return "", err
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		buf = make([]byte, 2*len(buf))
	}
}
