package boxarchive

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// Reader reads an archive from a stream, in one pass: NewReader reads and
// checks the manifest, Extract the members. Nothing of the archive is
// trusted before it is checked.
type Reader struct {
	tr     *tar.Reader
	m      *Manifest
	limits Limits
	used   bool
}

// NewReader reads the archive's manifest from r and checks it against the
// format's rules and limits. The caller can then decide, from the manifest
// alone, whether to go on (is the box name free? the image at hand?)
// before Extract reads any data.
func NewReader(r io.Reader, limits Limits) (*Reader, error) {
	limits = limits.withDefaults()
	tr := tar.NewReader(r)
	hdr, err := tr.Next()
	switch {
	case errors.Is(err, io.EOF):
		return nil, refuse(ErrNotArchive, "", "", "the input is empty")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return nil, refuse(ErrTruncated, "", "", "the input ends inside the first tar header")
	case errors.Is(err, tar.ErrHeader):
		return nil, refuse(ErrNotArchive, "", "", "the input is not a tar archive")
	case err != nil:
		return nil, fmt.Errorf("box archive: read: %w", err)
	}
	if err := checkName(hdr); err != nil {
		return nil, err
	}
	if hdr.Name != ManifestName {
		return nil, refuse(ErrNotArchive, hdr.Name, "", "the first member must be %s", ManifestName)
	}
	if hdr.Typeflag != tar.TypeReg {
		return nil, refuse(ErrMemberType, hdr.Name, "", "it is %s", typeName(hdr))
	}
	if hdr.Size > limits.MaxManifestSize {
		return nil, refuse(ErrTooLarge, ManifestName, "", "%d bytes, the limit is %d", hdr.Size, limits.MaxManifestSize)
	}
	body := make([]byte, hdr.Size)
	if _, err := io.ReadFull(tr, body); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, refuse(ErrTruncated, ManifestName, "", "the archive ends inside the manifest")
		}
		return nil, fmt.Errorf("box archive: read the manifest: %w", err)
	}
	m, err := decodeManifest(body, limits)
	if err != nil {
		return nil, err
	}
	return &Reader{tr: tr, m: m, limits: limits}, nil
}

// Manifest returns the checked manifest.
func (r *Reader) Manifest() *Manifest { return r.m }

// Extracted is what Extract made: the disk and snapshot files (qcow2, as
// the archive declared them: the caller must still validate them as
// untrusted disk images) and the image's OCI layout directory.
type Extracted struct {
	Dir       string
	Disk      File
	Snapshots []File
	// Image is nil when the archive has no image; its Path is an OCI
	// image layout directory.
	Image   *File
	created []string
}

// File is one extracted member.
type File struct {
	Member Member
	Path   string
}

// Remove deletes everything Extract made.
func (e *Extracted) Remove() error {
	var errs []error
	for _, p := range e.created {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	e.created = nil
	return errors.Join(errs...)
}

// Extract reads every member into new files in dir (which must exist),
// checking each member's name, type, order, sizes and checksum, and that
// nothing follows the last one. On any error it removes what it made and
// returns an *Error naming the member and what was wrong (or the I/O or
// context error that stopped it). A Reader extracts once.
func (r *Reader) Extract(ctx context.Context, dir string) (_ *Extracted, err error) {
	if r.used {
		return nil, errors.New("box archive: already extracted")
	}
	r.used = true
	if err := checkSpace(dir, r.m.Members); err != nil {
		return nil, err
	}
	ex := &Extracted{Dir: dir}
	defer func() {
		if err != nil {
			_ = ex.Remove()
		}
	}()
	snaps := 0
	for i, mem := range r.m.Members {
		if err := r.nextMember(i); err != nil {
			return nil, err
		}
		var dst string
		switch mem.Kind {
		case KindDisk:
			dst = filepath.Join(dir, "disk.qcow2")
		case KindSnapshot:
			snaps++
			dst = filepath.Join(dir, fmt.Sprintf("snapshot-%d.qcow2", snaps))
		case KindImage:
			dst = filepath.Join(dir, "image")
		}
		ex.created = append(ex.created, dst)
		if err := r.extractMember(ctx, mem, dst); err != nil {
			return nil, err
		}
		f := File{Member: mem, Path: dst}
		switch mem.Kind {
		case KindDisk:
			ex.Disk = f
		case KindSnapshot:
			ex.Snapshots = append(ex.Snapshots, f)
		case KindImage:
			ex.Image = &f
		}
	}
	hdr, err := r.tr.Next()
	switch {
	case errors.Is(err, io.EOF):
		return ex, nil
	case errors.Is(err, io.ErrUnexpectedEOF):
		return nil, refuse(ErrTruncated, "", "", "the archive ends inside the tar end-of-archive marker")
	case err != nil:
		return nil, refuse(ErrCorrupt, "", "", "after the last member: %v", err)
	}
	if err := checkName(hdr); err != nil {
		return nil, err
	}
	return nil, refuse(ErrUndeclared, hdr.Name, "", "it follows the last member the manifest lists")
}

// checkName refuses member names that would escape a directory, whatever
// the manifest says.
func checkName(hdr *tar.Header) error {
	name := hdr.Name
	if path.IsAbs(name) {
		return refuse(ErrUnsafeName, name, "", "absolute member names are refused")
	}
	for _, el := range strings.Split(name, "/") {
		if el == ".." {
			return refuse(ErrUnsafeName, name, "", "member names with \"..\" are refused")
		}
	}
	return nil
}

// nextMember reads the tar header of member i and checks it is that member.
func (r *Reader) nextMember(i int) error {
	want := r.m.Members[i]
	hdr, err := r.tr.Next()
	switch {
	case errors.Is(err, io.EOF):
		return refuse(ErrTruncated, want.Name, "", "the archive ends before it (%d of %d members read)", i, len(r.m.Members))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return refuse(ErrTruncated, want.Name, "", "the archive ends inside its tar header")
	case errors.Is(err, tar.ErrHeader):
		return refuse(ErrCorrupt, want.Name, "", "a corrupt tar header where it should start")
	case err != nil:
		return fmt.Errorf("box archive: read: %w", err)
	}
	if err := checkName(hdr); err != nil {
		return err
	}
	if hdr.Typeflag != tar.TypeReg {
		return refuse(ErrMemberType, hdr.Name, "", "it is %s", typeName(hdr))
	}
	if hdr.Name != want.Name {
		for j, m := range r.m.Members {
			switch {
			case m.Name != hdr.Name:
			case j < i:
				return refuse(ErrUndeclared, hdr.Name, "", "it appears twice")
			default:
				return refuse(ErrUndeclared, hdr.Name, "", "out of order: the manifest lists %q before it", want.Name)
			}
		}
		if hdr.Name == ManifestName {
			return refuse(ErrUndeclared, hdr.Name, "", "a second manifest")
		}
		return refuse(ErrUndeclared, hdr.Name, "", "the manifest does not list it (the next member should be %q)", want.Name)
	}
	if hdr.Size != want.CompressedSize {
		return refuse(ErrSize, want.Name, fmt.Sprintf("members[%d].compressed_size", i), "the tar member is %d bytes, the manifest declares %d", hdr.Size, want.CompressedSize)
	}
	return nil
}

// extractMember decodes the current tar member into dst: a file for disks
// and snapshots, a layout directory for the image.
func (r *Reader) extractMember(ctx context.Context, mem Member, dst string) error {
	raw := &sourceReader{r: r.tr}
	// Concurrency 1 decodes synchronously: no goroutine reads the archive
	// behind our back, so nothing is left reading it after an error.
	dec, err := zstd.NewReader(raw, zstd.WithDecoderMaxWindow(maxWindow), zstd.WithDecoderConcurrency(1))
	if err != nil {
		return err
	}
	defer dec.Close()
	data := &memberReader{ctx: ctx, dec: dec, raw: raw, mem: mem, h: newAsyncHash()}
	defer data.h.Close()
	if mem.Kind == KindImage {
		if err := extractLayoutTar(ctx, data, dst, mem.Name); err != nil {
			return err
		}
		// The rest of the inner tar (its end blocks) counts too.
		if _, err := io.Copy(io.Discard, data); err != nil {
			return err
		}
	} else if err := writeSparse(dst, data); err != nil {
		return err
	}
	if rest, err := io.Copy(io.Discard, r.tr); err != nil || rest > 0 {
		if err != nil {
			return refuse(ErrTruncated, mem.Name, "", "%v", err)
		}
		return refuse(ErrCorrupt, mem.Name, "", "%d bytes follow its zstd data", rest)
	}
	if sum := hex.EncodeToString(data.h.Sum()); sum != mem.SHA256 {
		return refuse(ErrChecksum, mem.Name, "sha256", "the data hashes to %s, the manifest declares %s", sum, mem.SHA256)
	}
	return nil
}

// sourceReader remembers the error the tar stream gave, so that a decoder
// failure caused by a truncated archive is reported as truncation.
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		s.err = err
	}
	return n, err
}

// memberReader is a member's uncompressed stream: it hashes what it
// returns, refuses more bytes than declared (or fewer, at the end) and
// turns decoder errors into refusals of the member.
type memberReader struct {
	ctx context.Context
	dec *zstd.Decoder
	raw *sourceReader
	mem Member
	h   *asyncHash
	n   int64
}

func (m *memberReader) Read(p []byte) (int, error) {
	if err := m.ctx.Err(); err != nil {
		return 0, err
	}
	// Ask for at most one byte beyond the declared size: enough to see
	// that there is more, never enough to write much of it.
	if left := m.mem.Size - m.n + 1; int64(len(p)) > left {
		p = p[:left]
	}
	k, err := m.dec.Read(p)
	m.n += int64(k)
	if m.n > m.mem.Size {
		return 0, refuse(ErrSize, m.mem.Name, "size", "it decompresses to more than the declared %d bytes", m.mem.Size)
	}
	m.h.Write(p[:k])
	switch {
	case err == nil:
		return k, nil
	case errors.Is(err, io.EOF):
		if m.n < m.mem.Size {
			return k, refuse(ErrSize, m.mem.Name, "size", "it decompresses to %d bytes, the manifest declares %d", m.n, m.mem.Size)
		}
		return k, io.EOF
	case m.raw.err != nil && errors.Is(m.raw.err, io.ErrUnexpectedEOF):
		return k, refuse(ErrTruncated, m.mem.Name, "", "the archive ends inside it")
	case m.raw.err != nil:
		return k, fmt.Errorf("box archive: read member %q: %w", m.mem.Name, m.raw.err)
	}
	return k, refuse(ErrCorrupt, m.mem.Name, "", "not valid zstd data: %v", err)
}

const sparseBlock = 64 << 10

var zeroBlock [sparseBlock]byte

// writeSparse copies r into a new file at dst, leaving holes for
// all-zero blocks (the disks are mostly empty; there is no point in
// writing their zeros).
func writeSparse(dst string, r io.Reader) error {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	w := &sparseWriter{f: f}
	buf := make([]byte, 1<<20)
	_, err = io.CopyBuffer(w, r, buf)
	if err == nil {
		err = f.Truncate(w.off)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

type sparseWriter struct {
	f   *os.File
	off int64
}

func (s *sparseWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		n := min(len(p), sparseBlock-int(s.off%sparseBlock))
		if bytes.Equal(p[:n], zeroBlock[:n]) {
			s.off += int64(n)
			p = p[n:]
			continue
		}
		end := n
		for end < len(p) {
			k := min(len(p)-end, sparseBlock)
			if bytes.Equal(p[end:end+k], zeroBlock[:k]) {
				break
			}
			end += k
		}
		if _, err := s.f.WriteAt(p[:end], s.off); err != nil {
			return total - len(p), err
		}
		s.off += int64(end)
		p = p[end:]
	}
	return total, nil
}

// checkSpace refuses, before anything is written, an archive whose members
// would not fit in dir's filesystem.
func checkSpace(dir string, members []Member) error {
	var need int64
	for _, m := range members {
		need += m.Size
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("box archive: %s: %w", dir, err)
	}
	if free := int64(st.Bavail) * st.Bsize; free >= 0 && need > free {
		return refuse(ErrNoSpace, "", "", "its members need %d bytes uncompressed, %s has %d free: free space, or import into a home on a larger filesystem", need, dir, free)
	}
	return nil
}
