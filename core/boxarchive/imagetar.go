package boxarchive

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/boxctl/boxctl/internal/ctxio"
	"github.com/boxctl/boxctl/internal/namecheck"
)

// An image member is a tar of an OCI image layout holding exactly:
// oci-layout, index.json and blobs/sha256/<hex> files, regular files only,
// each blob's SHA-256 equal to its name. Nothing else is accepted, so the
// inner tar can never create anything but those files.

// maxLayoutMetadata caps oci-layout and index.json.
const maxLayoutMetadata = 4 << 20

func isBlobDir(rel string) bool { return rel == "blobs/sha256" }

func layoutPathOK(rel string) bool {
	if rel == "oci-layout" || rel == "index.json" {
		return true
	}
	hex, ok := strings.CutPrefix(rel, "blobs/sha256/")
	return ok && namecheck.SHA256Hex(hex)
}

func writeLayoutTar(ctx context.Context, w io.Writer, dir string, files []string) error {
	tw := tar.NewWriter(w)
	for _, rel := range files {
		f, err := os.Open(filepath.Join(dir, filepath.FromSlash(rel)))
		if err != nil {
			return err
		}
		fi, err := f.Stat()
		if err == nil && !fi.Mode().IsRegular() {
			err = fmt.Errorf("%s is not a regular file", rel)
		}
		if err == nil {
			err = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: rel, Size: fi.Size(), Mode: 0o644, ModTime: fi.ModTime(), Format: tar.FormatPAX})
		}
		if err == nil {
			// A file that changes size under us fails the tar writer.
			_, err = io.Copy(tw, ctxio.Reader(ctx, f))
		}
		f.Close()
		if err != nil {
			return fmt.Errorf("box archive: image layout %s: %w", dir, err)
		}
	}
	return tw.Close()
}

// extractLayoutTar unpacks the inner tar of an image member into dest
// (which it creates), refusing anything but the layout's own files. Errors
// reading src are returned as they are (the caller classifies them); the
// tar's own problems are ErrCorrupt.
func extractLayoutTar(ctx context.Context, src io.Reader, dest, member string) error {
	if err := os.Mkdir(dest, 0o700); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dest, "blobs", "sha256"), 0o700); err != nil {
		return err
	}
	tr := tar.NewReader(src)
	seen := map[string]bool{}
	bad := func(format string, args ...any) error {
		return refuse(ErrCorrupt, member, "", "image layout: "+format, args...)
	}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return innerTarErr(err, bad)
		}
		name := hdr.Name
		if path.IsAbs(name) || strings.HasPrefix(name, "../") || strings.Contains(name, "/../") || name == ".." {
			return refuse(ErrUnsafeName, member, "", "image layout entry %q", name)
		}
		if hdr.Typeflag != tar.TypeReg {
			return refuse(ErrMemberType, member, "", "image layout entry %q is %s, not a regular file", name, typeName(hdr))
		}
		if !layoutPathOK(name) {
			return bad("entry %q is not part of an OCI image layout (only oci-layout, index.json and blobs/sha256/<hex>)", name)
		}
		if seen[name] {
			return bad("entry %q appears twice", name)
		}
		seen[name] = true
		if (name == "oci-layout" || name == "index.json") && hdr.Size > maxLayoutMetadata {
			return bad("%s is %d bytes, over %d", name, hdr.Size, maxLayoutMetadata)
		}
		if err := writeLayoutFile(ctx, tr, filepath.Join(dest, filepath.FromSlash(name)), name, hdr.Size, bad); err != nil {
			return err
		}
	}
	for _, must := range []string{"oci-layout", "index.json"} {
		if !seen[must] {
			return bad("no %s", must)
		}
	}
	return nil
}

func writeLayoutFile(ctx context.Context, r io.Reader, dst, name string, size int64, bad func(string, ...any) error) error {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), ctxio.Reader(ctx, r))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return innerTarErr(err, bad)
	}
	if n != size {
		return bad("entry %q is truncated", name)
	}
	if hexSum, ok := strings.CutPrefix(name, "blobs/sha256/"); ok && hex.EncodeToString(h.Sum(nil)) != hexSum {
		return bad("blob %s does not hash to its name", hexSum)
	}
	return nil
}

// innerTarErr passes through what the outer stream reported (it is
// classified by the caller) and makes the inner tar's own format errors
// ErrCorrupt.
func innerTarErr(err error, bad func(string, ...any) error) error {
	var ae *Error
	if errors.As(err, &ae) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, tar.ErrHeader) {
		return bad("not a valid tar: %v", err)
	}
	return err
}

func typeName(h *tar.Header) string {
	switch h.Typeflag {
	case tar.TypeSymlink:
		return fmt.Sprintf("a symbolic link to %q", h.Linkname)
	case tar.TypeLink:
		return fmt.Sprintf("a hard link to %q", h.Linkname)
	case tar.TypeDir:
		return "a directory"
	case tar.TypeChar, tar.TypeBlock:
		return "a device"
	case tar.TypeFifo:
		return "a FIFO"
	}
	return fmt.Sprintf("of tar type %q", h.Typeflag)
}
