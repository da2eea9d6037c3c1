package containerd

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Media types of the single-layer OCI layout the shim writes.
const (
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar"
)

type descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
}

// writeLayout writes the directory tree at rootfs as a one-layer OCI image
// layout in dir (created), and returns the manifest digest: boxctl's image
// plugin then builds the box's read-only root disk from that layer stream
// as it does for any image (oci-layout:DIR@DIGEST). The tar is written in
// name order with the files' own metadata, so one snapshot gives one
// digest and containers of one image share one cached root disk.
//
// files maps paths in the container (absolute) to host files whose
// contents, at this moment, are placed there in the layer: OCI bind mounts
// of single files (CRI's /etc/hosts, /etc/resolv.conf, /etc/hostname) are
// copies in a box, not live views.
func writeLayout(rootfs, dir string, files map[string]string) (string, error) {
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o700); err != nil {
		return "", fmt.Errorf("create image layout %s: %w", dir, err)
	}
	layer, err := writeLayer(rootfs, blobs, files)
	if err != nil {
		return "", err
	}
	cfg := map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{layer.Digest}},
		"config":       map[string]any{},
	}
	cfgDesc, err := writeJSONBlob(blobs, mediaConfig, cfg)
	if err != nil {
		return "", err
	}
	manifest := map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaManifest,
		"config":        cfgDesc,
		"layers":        []descriptor{layer},
	}
	mDesc, err := writeJSONBlob(blobs, mediaManifest, manifest)
	if err != nil {
		return "", err
	}
	index := map[string]any{"schemaVersion": 2, "manifests": []descriptor{mDesc}}
	for name, v := range map[string]any{"index.json": index, "oci-layout": map[string]string{"imageLayoutVersion": "1.0.0"}} {
		data, err := json.Marshal(v)
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return "", fmt.Errorf("write image layout %s: %w", dir, err)
		}
	}
	return mDesc.Digest, nil
}

func writeJSONBlob(blobs, mediaType string, v any) (descriptor, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return descriptor{}, err
	}
	sum := sha256.Sum256(data)
	hexSum := hex.EncodeToString(sum[:])
	if err := os.WriteFile(filepath.Join(blobs, hexSum), data, 0o600); err != nil {
		return descriptor{}, fmt.Errorf("write image blob: %w", err)
	}
	return descriptor{MediaType: mediaType, Digest: "sha256:" + hexSum, Size: int64(len(data))}, nil
}

// writeLayer tars rootfs into a blob under blobs.
func writeLayer(rootfs, blobs string, files map[string]string) (descriptor, error) {
	tmp, err := os.CreateTemp(blobs, "layer-*")
	if err != nil {
		return descriptor{}, fmt.Errorf("create layer: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	cw := &countingWriter{w: io.MultiWriter(tmp, h)}
	if err := tarTree(rootfs, cw, files); err != nil {
		return descriptor{}, fmt.Errorf("archive container rootfs %s: %w", rootfs, err)
	}
	if err := tmp.Close(); err != nil {
		return descriptor{}, err
	}
	hexSum := hex.EncodeToString(h.Sum(nil))
	if err := os.Rename(tmp.Name(), filepath.Join(blobs, hexSum)); err != nil {
		return descriptor{}, err
	}
	return descriptor{MediaType: mediaLayer, Digest: "sha256:" + hexSum, Size: cw.n}, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// tarTree writes the tree at root, in name order, without following
// symlinks; hard links within the tree stay hard links.
func tarTree(root string, w io.Writer, files map[string]string) error {
	tw := tar.NewWriter(w)
	type inode struct{ dev, ino uint64 }
	seen := map[inode]string{}
	extra := map[string]string{} // rel path in the tree -> host file
	for dst, src := range files {
		extra[strings.TrimPrefix(filepath.Clean("/"+dst), "/")] = src
	}
	written := map[string]bool{}
	err := walkSorted(root, "", func(rel string, info fs.FileInfo) error {
		written[rel] = true
		if src, ok := extra[rel]; ok && !info.IsDir() {
			return addFile(tw, rel, src)
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			var err error
			if link, err = os.Readlink(filepath.Join(root, rel)); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		hdr.Name = rel
		if info.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		hdr.Format = tar.FormatPAX
		hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && info.Mode().IsRegular() && st.Nlink > 1 {
			key := inode{uint64(st.Dev), st.Ino}
			if first, ok := seen[key]; ok {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			} else {
				seen[key] = rel
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag != tar.TypeReg {
			return nil
		}
		f, err := os.Open(filepath.Join(root, rel))
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return err
	}
	rels := make([]string, 0, len(extra))
	for rel := range extra {
		rels = append(rels, rel)
	}
	sort.Strings(rels)
	for _, rel := range rels {
		if written[rel] {
			continue
		}
		// Parents the rootfs lacks (a /dev for /dev/termination-log).
		var parents []string
		for d := filepath.Dir(rel); d != "." && !written[d]; d = filepath.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, Format: tar.FormatPAX}); err != nil {
				return err
			}
			written[d] = true
		}
		if err := addFile(tw, rel, extra[rel]); err != nil {
			return err
		}
	}
	return tw.Close()
}

// addFile writes host file src at rel, with src's mode and contents.
func addFile(tw *tar.Writer, rel, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("bind-mounted file %s: %w", src, err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return err
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("bind-mounted file %s is not a regular file", src)
	}
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: rel, Mode: int64(info.Mode().Perm()), Size: info.Size(), ModTime: info.ModTime(), Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err = io.CopyN(tw, f, info.Size())
	return err
}

func walkSorted(root, rel string, fn func(rel string, info fs.FileInfo) error) error {
	entries, err := os.ReadDir(filepath.Join(root, rel))
	if err != nil {
		return err
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	for _, e := range entries {
		p := filepath.Join(rel, e.Name())
		info, err := os.Lstat(filepath.Join(root, p))
		if err != nil {
			return err
		}
		if err := fn(p, info); err != nil {
			return err
		}
		if info.IsDir() {
			if err := walkSorted(root, p, fn); err != nil {
				return err
			}
		}
	}
	return nil
}
