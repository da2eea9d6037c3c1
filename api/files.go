package api

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/boxctl/boxctl/core"
)

// errEnough ends a download once the server has read what it needed.
var errEnough = errors.New("read enough of the tar")

func boxPath(r *http.Request) (string, error) {
	p := r.URL.Query().Get("path")
	if p == "" || !strings.HasPrefix(p, "/") {
		return "", badRequest(fmt.Sprintf("query parameter path=%q: an absolute path in the box is required", p))
	}
	return p, nil
}

// putFiles uploads a tar (Content-Type application/x-tar: path is the
// directory it is extracted into) or a single file (any other type: path
// is the file, created or replaced; mode=0644 by default).
func (s *Server) putFiles(w http.ResponseWriter, r *http.Request) {
	dest, err := boxPath(r)
	if err != nil {
		writeError(w, err)
		return
	}
	noOverwrite, err := boolParam(r, "no_overwrite")
	if err != nil {
		writeError(w, err)
		return
	}
	b, err := s.startDetached(r, r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	body := http.MaxBytesReader(w, r.Body, s.maxUpload)
	opts := core.CopyOptions{NoOverwrite: noOverwrite}
	if mediaType(r) == "application/x-tar" {
		if err := s.rt.UploadTar(r.Context(), b.ID, body, dest, opts); err != nil {
			writeError(w, s.uploadErr(err))
			return
		}
		w.WriteHeader(http.StatusNoContent)
		return
	}
	mode := int64(0o644)
	if v := r.URL.Query().Get("mode"); v != "" {
		mode, err = strconv.ParseInt(v, 8, 32)
		if err != nil || mode < 0 || mode > 0o7777 {
			writeError(w, badRequest(fmt.Sprintf("query parameter mode=%q: octal permission bits such as 0644", v)))
			return
		}
	}
	clean := path.Clean(dest)
	if clean == "/" {
		writeError(w, badRequest("path=/: name the file to write"))
		return
	}
	size := r.ContentLength
	var content io.Reader = body
	if size < 0 {
		// A tar header needs the size: spool a chunked body first.
		f, err := os.CreateTemp("", "boxctl-upload")
		if err != nil {
			writeError(w, err)
			return
		}
		defer os.Remove(f.Name())
		defer f.Close()
		if size, err = io.Copy(f, body); err != nil {
			writeError(w, s.uploadErr(err))
			return
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			writeError(w, err)
			return
		}
		content = f
	}
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: path.Base(clean), Size: size, Mode: mode, ModTime: time.Now()})
		if err == nil {
			_, err = io.CopyN(tw, content, size)
		}
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	err = s.rt.UploadTar(r.Context(), b.ID, pr, path.Dir(clean), opts)
	pr.CloseWithError(errEnough)
	if err != nil {
		writeError(w, s.uploadErr(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) uploadErr(err error) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return &apiError{code: CodeTooLarge, msg: fmt.Sprintf("upload over %d bytes, the server's limit", s.maxUpload)}
	}
	return err
}

func mediaType(r *http.Request) string {
	t, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";")
	return strings.TrimSpace(strings.ToLower(t))
}

// headerWriter sends the response's status and headers at its first
// write, so that an error found before any data is still a JSON error.
type headerWriter struct {
	w           http.ResponseWriter
	contentType string
	started     bool
}

func (h *headerWriter) Write(p []byte) (int, error) {
	if !h.started {
		h.started = true
		h.w.Header().Set("Content-Type", h.contentType)
		h.w.WriteHeader(http.StatusOK)
	}
	return h.w.Write(p)
}

// getFiles downloads path as a tar (format=tar, the default) or, for a
// regular file, its bytes (format=raw). The tar comes from the guest and
// is not trusted: extract it with care (docs/api.md).
func (s *Server) getFiles(w http.ResponseWriter, r *http.Request) {
	src, err := boxPath(r)
	if err != nil {
		writeError(w, err)
		return
	}
	follow, err := boolParam(r, "follow_symlinks")
	if err != nil {
		writeError(w, err)
		return
	}
	b, err := s.startDetached(r, r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	opts := core.CopyOptions{FollowSymlinks: follow}
	switch f := r.URL.Query().Get("format"); f {
	case "", "tar":
		hw := &headerWriter{w: w, contentType: "application/x-tar"}
		if err := s.rt.DownloadTar(r.Context(), b.ID, src, hw, opts); err != nil && !hw.started {
			writeError(w, err)
		}
	case "raw":
		s.rawFile(w, r, b.ID, src, opts)
	default:
		writeError(w, badRequest(fmt.Sprintf("query parameter format=%q: tar or raw", f)))
	}
}

// firstEntries runs a download of src and hands its tar to read, which
// stops when it has what it needs.
func (s *Server) readTar(ctx context.Context, id, src string, opts core.CopyOptions, read func(*tar.Reader) error) error {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := s.rt.DownloadTar(ctx, id, src, pw, opts)
		pw.CloseWithError(err)
		done <- err
	}()
	rerr := read(tar.NewReader(pr))
	pr.CloseWithError(errEnough)
	derr := <-done
	if derr != nil && !errors.Is(derr, errEnough) && !errors.Is(derr, io.ErrClosedPipe) {
		return derr
	}
	return rerr
}

func (s *Server) rawFile(w http.ResponseWriter, r *http.Request, id, src string, opts core.CopyOptions) {
	hw := &headerWriter{w: w, contentType: "application/octet-stream"}
	err := s.readTar(r.Context(), id, src, opts, func(tr *tar.Reader) error {
		h, err := tr.Next()
		if err != nil {
			return fmt.Errorf("read the box's tar of %s: %w", src, err)
		}
		if h.Typeflag != tar.TypeReg {
			return badRequest(fmt.Sprintf("%s is not a regular file (a %s): download it with format=tar", src, fileType(h)))
		}
		w.Header().Set("Content-Length", strconv.FormatInt(h.Size, 10))
		_, err = io.Copy(hw, tr)
		return err
	})
	if err != nil && !hw.started {
		writeError(w, err)
	}
}

func fileType(h *tar.Header) string {
	switch h.Typeflag {
	case tar.TypeReg:
		return "file"
	case tar.TypeDir:
		return "dir"
	case tar.TypeSymlink:
		return "symlink"
	}
	return "other"
}

func fileInfo(h *tar.Header, name string) FileInfo {
	return FileInfo{
		Name: name, Size: h.Size, Type: fileType(h), Link: h.Linkname,
		Mode:    fmt.Sprintf("%04o", h.Mode&0o7777),
		ModTime: h.ModTime.UTC(),
	}
}

func (s *Server) stat(r *http.Request, id, p string) (FileInfo, error) {
	clean := path.Clean(p)
	if clean == "/" {
		return FileInfo{Name: "/", Type: "dir", Mode: "0755"}, nil
	}
	var info FileInfo
	err := s.readTar(r.Context(), id, clean, core.CopyOptions{}, func(tr *tar.Reader) error {
		h, err := tr.Next()
		if err != nil {
			return fmt.Errorf("read the box's tar of %s: %w", clean, err)
		}
		info = fileInfo(h, path.Base(clean))
		return nil
	})
	return info, err
}

func (s *Server) statFile(w http.ResponseWriter, r *http.Request) {
	p, err := boxPath(r)
	if err != nil {
		writeError(w, err)
		return
	}
	b, err := s.startDetached(r, r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	info, err := s.stat(r, b.ID, p)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

// listFiles lists a directory's entries (not recursively). It reads the
// box's tar of the directory, so it costs as much as downloading it.
func (s *Server) listFiles(w http.ResponseWriter, r *http.Request) {
	p, err := boxPath(r)
	if err != nil {
		writeError(w, err)
		return
	}
	b, err := s.startDetached(r, r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	info, err := s.stat(r, b.ID, p)
	if err != nil {
		writeError(w, err)
		return
	}
	if info.Type != "dir" {
		writeError(w, badRequest(fmt.Sprintf("%s is not a directory (a %s): stat it instead", p, info.Type)))
		return
	}
	clean := path.Clean(p)
	entries := []FileInfo{}
	err = s.readTar(r.Context(), b.ID, strings.TrimSuffix(clean, "/")+"/.", core.CopyOptions{}, func(tr *tar.Reader) error {
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("read the box's tar of %s: %w", clean, err)
			}
			name := strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")
			if name == "" || name == "." || strings.Contains(name, "/") {
				continue
			}
			entries = append(entries, fileInfo(h, name))
		}
	})
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, FileList{Path: clean, Entries: entries})
}
