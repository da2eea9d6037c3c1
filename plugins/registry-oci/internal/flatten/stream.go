package flatten

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/layer"
)

const (
	paxXattr       = "SCHILY.xattr."
	paxLibarchiveX = "LIBARCHIVE.xattr."
)

// WriteTar runs the stream pass: it writes the flattened root filesystem as
// one tar stream to w. Directories may appear after their children (the
// consumer must create missing parents and later apply the directory's own
// metadata, as tar2ext4 does); every path appears exactly once.
func (p *Plan) WriteTar(ctx context.Context, w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	tw := tar.NewWriter(bw)
	// Directories that no layer describes (parents implied by deeper
	// entries) get Docker's defaults.
	for _, d := range p.implicitDirs {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}); err != nil {
			return err
		}
	}
	ra := p.startReadAhead(ctx)
	defer ra.close()
	for li := range p.layers {
		if p.last[li] < 0 {
			continue
		}
		err := p.streamLayer(ctx, li, ra.layers[li], tw)
		ra.layers[li].done()
		if err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

func (p *Plan) streamLayer(ctx context.Context, li int, src *aheadLayer, tw *tar.Writer) error {
	l := p.layers[li]
	bad := func(entry string, err error) error {
		return &layer.BadLayerError{Layer: l.Digest, Entry: entry, Err: err}
	}
	dr, err := src.open()
	if err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return err
	}
	tr := tar.NewReader(dr)
	acts := p.actions[li]
	for ord := 0; ord <= p.last[li]; ord++ {
		if ctx.Err() != nil {
			// The cause, not just "canceled": a consumer that stopped
			// reading cancels with its own error (see rootfs.Build).
			return context.Cause(ctx)
		}
		hdr, err := tr.Next()
		if err != nil {
			if ctx.Err() != nil {
				// The decompressor stopped because the build was cancelled;
				// the layer is not at fault.
				return context.Cause(ctx)
			}
			return bad("", fmt.Errorf("reading entry %d: %v", ord, err))
		}
		a := acts[ord]
		if a == nil {
			continue
		}
		// The index was built from these very bytes; a disagreement means the
		// index is stale or corrupt, and emitting anything would be wrong.
		want := l.Index.Entries[ord]
		if got, err := layer.Classify(hdr); err != nil || got.Name != want.Name || got.Type != want.Type {
			return fmt.Errorf("layer %s: entry %d (%q) does not match the layer index; remove the index to rebuild it", l.Digest, ord, hdr.Name)
		}
		if err := emit(tw, tr, hdr, a); err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			return fmt.Errorf("layer %s: entry %q: %w", l.Digest, hdr.Name, err)
		}
	}
	return nil
}

func emit(tw *tar.Writer, tr io.Reader, hdr *tar.Header, a *action) error {
	out := &tar.Header{
		Mode:       hdr.Mode & 0o7777,
		Uid:        hdr.Uid,
		Gid:        hdr.Gid,
		ModTime:    hdr.ModTime,
		AccessTime: hdr.AccessTime,
		ChangeTime: hdr.ChangeTime,
		PAXRecords: xattrRecords(hdr.PAXRecords),
	}
	if hdr.ModTime.Nanosecond() != 0 || len(out.PAXRecords) > 0 {
		out.Format = tar.FormatPAX
	}
	if out.AccessTime.IsZero() {
		out.AccessTime = hdr.ModTime
	}
	if out.ChangeTime.IsZero() {
		out.ChangeTime = hdr.ModTime
	}
	if out.Format != tar.FormatPAX {
		// Only PAX carries atime/ctime; the others would reject them.
		out.AccessTime, out.ChangeTime = time.Time{}, time.Time{}
	}
	if a.dir {
		out.Typeflag = tar.TypeDir
		out.Name = a.paths[0] + "/"
		if a.paths[0] == "" {
			out.Name = "./"
		}
		return tw.WriteHeader(out)
	}
	out.Name = a.paths[0]
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeCont, tar.TypeGNUSparse:
		out.Typeflag = tar.TypeReg
		out.Size = hdr.Size
	case tar.TypeSymlink:
		out.Typeflag = tar.TypeSymlink
		out.Linkname = hdr.Linkname
	case tar.TypeChar, tar.TypeBlock:
		out.Typeflag = hdr.Typeflag
		out.Devmajor, out.Devminor = hdr.Devmajor, hdr.Devminor
	case tar.TypeFifo:
		out.Typeflag = tar.TypeFifo
	default:
		return fmt.Errorf("unexpected entry type %q", string(hdr.Typeflag))
	}
	if err := tw.WriteHeader(out); err != nil {
		return err
	}
	if out.Size > 0 {
		if _, err := io.CopyN(tw, tr, out.Size); err != nil {
			return fmt.Errorf("copy file data: %w", err)
		}
	}
	for _, name := range a.paths[1:] {
		l := *out
		l.Typeflag, l.Name, l.Linkname, l.Size = tar.TypeLink, name, a.paths[0], 0
		l.PAXRecords = nil
		l.Devmajor, l.Devminor = 0, 0
		if err := tw.WriteHeader(&l); err != nil {
			return err
		}
	}
	return nil
}

// xattrRecords keeps only extended attributes from a header's PAX records,
// normalizing libarchive's encoding to the SCHILY form tar2ext4 reads.
func xattrRecords(recs map[string]string) map[string]string {
	var out map[string]string
	keys := make([]string, 0, len(recs))
	for k := range recs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := recs[k]
		switch {
		case strings.HasPrefix(k, paxXattr):
		case strings.HasPrefix(k, paxLibarchiveX):
			n, err1 := url.QueryUnescape(strings.TrimPrefix(k, paxLibarchiveX))
			b, err2 := base64.StdEncoding.DecodeString(v)
			if err1 != nil || err2 != nil {
				continue
			}
			k, v = paxXattr+n, string(b)
		default:
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		out[k] = v
	}
	return out
}
