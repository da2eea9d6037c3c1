package boxarchive

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// TestHostileArchives feeds the reader archives an attacker (or a broken
// disk, or a truncated download) would produce. Each must be refused with
// its own kind of error naming what was wrong, and leave nothing behind.
func TestHostileArchives(t *testing.T) {
	full, _ := fullArchive(t)
	m0, entries0 := splitArchive(t, full)
	// mutate returns an archive built from a copy of the full archive's
	// manifest and entries, as edited by fn.
	mutate := func(fn func(m *Manifest, es []entry) (any, []entry)) []byte {
		b, _ := json.Marshal(m0)
		var m Manifest
		_ = json.Unmarshal(b, &m)
		es := make([]entry, len(entries0))
		for i, e := range entries0 {
			es[i] = entry{hdr: e.hdr, data: append([]byte(nil), e.data...)}
		}
		manifest, es := fn(&m, es)
		if manifest == nil {
			manifest = &m
		}
		return joinArchive(t, manifest, es)
	}
	diskData := entries0[0].data
	cases := []struct {
		name    string
		archive []byte
		limits  Limits
		kind    error
		want    string // in the message
	}{
		{"empty input", nil, Limits{}, ErrNotArchive, "empty"},
		{"not a tar", bytes.Repeat([]byte("hello world\n"), 100), Limits{}, ErrNotArchive, "not a tar"},
		{"truncated inside the manifest", full[:700], Limits{}, ErrTruncated, "manifest"},
		{"truncated inside the disk", full[:len(full)/4], Limits{}, ErrTruncated, `"disk.qcow2.zst"`},
		{"truncated between members", full[:tarOffsetOf(t, full, 2)], Limits{}, ErrTruncated, `"snapshot-0001.qcow2.zst": archive truncated: the archive ends before it`},
		{"truncated before the image", full[:tarOffsetOf(t, full, 4)], Limits{}, ErrTruncated, `"image.tar.zst"`},
		{"first member is not the manifest", rawTar(t, entries0), Limits{}, ErrNotArchive, "first member must be manifest.json"},
		{"manifest is not JSON", mutate(func(m *Manifest, es []entry) (any, []entry) { return []byte("{nope"), es }), Limits{}, ErrNotArchive, "not JSON"},
		{"wrong format name", mutate(func(m *Manifest, es []entry) (any, []entry) { m.Format = "tarball"; return m, es }), Limits{}, ErrNotArchive, `"tarball"`},
		{"unknown version", mutate(func(m *Manifest, es []entry) (any, []entry) { m.Version = 7; return m, es }), Limits{}, ErrVersion, "version 7"},
		{"unknown manifest field", mutate(func(m *Manifest, es []entry) (any, []entry) {
			b, _ := json.Marshal(m)
			return append([]byte(`{"extra":1,`), b[1:]...), es
		}), Limits{}, ErrManifest, `unknown field "extra"`},
		{"manifest over the size cap", full, Limits{MaxManifestSize: 100}, ErrTooLarge, "manifest.json"},
		{"bad box name", mutate(func(m *Manifest, es []entry) (any, []entry) { m.Box.Name = "a b"; return m, es }), Limits{}, ErrManifest, "box.name"},
		{"bad image digest", mutate(func(m *Manifest, es []entry) (any, []entry) { m.Box.Image.Digest = "md5:x"; return m, es }), Limits{}, ErrManifest, "box.image.digest"},
		{"no disk member", mutate(func(m *Manifest, es []entry) (any, []entry) { m.Members = m.Members[1:]; return m, es[1:] }), Limits{}, ErrManifest, "first member must be the disk"},
		{"absurd declared size", mutate(func(m *Manifest, es []entry) (any, []entry) {
			m.Members[0].Size, m.Members[0].CompressedSize = 1<<50, 1<<40
			return m, es
		}), Limits{}, ErrTooLarge, "members[0].size"},
		{"size over a configured limit", full, Limits{MaxDiskSize: 100 << 10}, ErrTooLarge, "the limit is 102400"},
		{"absurd compressed size", mutate(func(m *Manifest, es []entry) (any, []entry) { m.Members[1].CompressedSize = 1 << 40; return m, es }), Limits{}, ErrManifest, "members[1].compressed_size"},
		{"dot-dot name in the manifest", mutate(func(m *Manifest, es []entry) (any, []entry) { m.Members[0].Name = "../x"; return m, es }), Limits{}, ErrUnsafeName, `members[0].name: unsafe member name: "../x"`},
		{"dot-dot member name", mutate(func(m *Manifest, es []entry) (any, []entry) { es[0].hdr.Name = "../x"; return m, es }), Limits{}, ErrUnsafeName, `member "../x"`},
		{"absolute member name", mutate(func(m *Manifest, es []entry) (any, []entry) { es[0].hdr.Name = "/etc/x"; return m, es }), Limits{}, ErrUnsafeName, `member "/etc/x": unsafe member name: absolute`},
		{"nested dot-dot member name", mutate(func(m *Manifest, es []entry) (any, []entry) { es[1].hdr.Name = "a/../../x"; return m, es }), Limits{}, ErrUnsafeName, `"a/../../x"`},
		{"symlink member", mutate(func(m *Manifest, es []entry) (any, []entry) {
			es[0] = entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "disk.qcow2.zst", Linkname: "/etc/shadow"}}
			return m, es
		}), Limits{}, ErrMemberType, `symbolic link to "/etc/shadow"`},
		{"hardlink member", mutate(func(m *Manifest, es []entry) (any, []entry) {
			es[0] = entry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "disk.qcow2.zst", Linkname: "/etc/shadow"}}
			return m, es
		}), Limits{}, ErrMemberType, `hard link to "/etc/shadow"`},
		{"directory member", mutate(func(m *Manifest, es []entry) (any, []entry) {
			es[0] = entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "disk.qcow2.zst", Mode: 0o755}}
			return m, es
		}), Limits{}, ErrMemberType, "a directory"},
		{"device member", mutate(func(m *Manifest, es []entry) (any, []entry) {
			es[0] = entry{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "disk.qcow2.zst", Devmajor: 1, Devminor: 3}}
			return m, es
		}), Limits{}, ErrMemberType, "a device"},
		{"undeclared extra member at the end", mutate(func(m *Manifest, es []entry) (any, []entry) {
			return m, append(es, entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "extra.bin", Mode: 0o644}, data: []byte("surprise")})
		}), Limits{}, ErrUndeclared, `member "extra.bin": undeclared member: it follows the last member`},
		{"undeclared member in the middle", mutate(func(m *Manifest, es []entry) (any, []entry) {
			extra := entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "extra.bin", Mode: 0o644}, data: []byte("surprise")}
			return m, append([]entry{es[0], extra}, es[1:]...)
		}), Limits{}, ErrUndeclared, `the manifest does not list it (the next member should be "snapshot-0001.qcow2.zst")`},
		{"members out of order", mutate(func(m *Manifest, es []entry) (any, []entry) {
			es[1], es[2] = es[2], es[1]
			return m, es
		}), Limits{}, ErrUndeclared, "out of order"},
		{"member twice", mutate(func(m *Manifest, es []entry) (any, []entry) {
			return m, append([]entry{es[0], es[0]}, es[1:]...)
		}), Limits{}, ErrUndeclared, "appears twice"},
		{"bad checksum", mutate(func(m *Manifest, es []entry) (any, []entry) {
			m.Members[1].SHA256 = strings.Repeat("0", 64)
			return m, es
		}), Limits{}, ErrChecksum, `member "snapshot-0001.qcow2.zst": sha256: checksum mismatch`},
		{"flipped bit in the data", mutate(func(m *Manifest, es []entry) (any, []entry) {
			es[0].data[len(es[0].data)/2] ^= 0x10
			return m, es
		}), Limits{}, ErrCorrupt, `member "disk.qcow2.zst": corrupt member: not valid zstd data`},
		{"garbage instead of zstd", mutate(func(m *Manifest, es []entry) (any, []entry) {
			es[0].data = bytes.Repeat([]byte("garbage!"), len(es[0].data)/8)
			m.Members[0].CompressedSize = int64(len(es[0].data))
			return m, es
		}), Limits{}, ErrCorrupt, "not valid zstd data"},
		{"tar size differs from the declared compressed size", mutate(func(m *Manifest, es []entry) (any, []entry) {
			m.Members[0].CompressedSize--
			return m, es
		}), Limits{}, ErrSize, "members[0].compressed_size"},
		{"decompresses to more than declared", mutate(func(m *Manifest, es []entry) (any, []entry) {
			m.Members[0].Size--
			return m, es
		}), Limits{}, ErrSize, "more than the declared"},
		{"decompresses to less than declared", mutate(func(m *Manifest, es []entry) (any, []entry) {
			m.Members[0].Size++
			return m, es
		}), Limits{}, ErrSize, "the manifest declares"},
		{"bytes after the zstd data", mutate(func(m *Manifest, es []entry) (any, []entry) {
			es[0].data = append(es[0].data, make([]byte, 64)...)
			m.Members[0].CompressedSize = int64(len(es[0].data))
			return m, es
		}), Limits{}, ErrCorrupt, `"disk.qcow2.zst"`},
		{"second zstd frame of extra data", mutate(func(m *Manifest, es []entry) (any, []entry) {
			es[0].data = append(es[0].data, zstdBytes(t, []byte("more"))...)
			m.Members[0].CompressedSize = int64(len(es[0].data))
			return m, es
		}), Limits{}, ErrSize, "more than the declared"},
		{"image layout with a symlink", mutate(func(m *Manifest, es []entry) (any, []entry) {
			inner := innerTar(t, tar.Header{Typeflag: tar.TypeSymlink, Name: "index.json", Linkname: "/etc/passwd"})
			setMember(t, m, es, 3, inner)
			return m, es
		}), Limits{}, ErrMemberType, `image layout entry "index.json" is a symbolic link`},
		{"image layout escaping with dot-dot", mutate(func(m *Manifest, es []entry) (any, []entry) {
			setMember(t, m, es, 3, innerTar(t, tar.Header{Typeflag: tar.TypeReg, Name: "../../evil", Size: 4}))
			return m, es
		}), Limits{}, ErrUnsafeName, `"../../evil"`},
		{"image layout with a foreign file", mutate(func(m *Manifest, es []entry) (any, []entry) {
			setMember(t, m, es, 3, innerTar(t, tar.Header{Typeflag: tar.TypeReg, Name: "blobs/sha256/run.sh", Size: 4}))
			return m, es
		}), Limits{}, ErrCorrupt, "not part of an OCI image layout"},
		{"image blob that does not match its name", mutate(func(m *Manifest, es []entry) (any, []entry) {
			setMember(t, m, es, 3, innerTar(t,
				tar.Header{Typeflag: tar.TypeReg, Name: "oci-layout", Size: 4},
				tar.Header{Typeflag: tar.TypeReg, Name: "index.json", Size: 4},
				tar.Header{Typeflag: tar.TypeReg, Name: "blobs/sha256/" + strings.Repeat("a", 64), Size: 4}))
			return m, es
		}), Limits{}, ErrCorrupt, "does not hash to its name"},
		{"image member of another image", mutate(func(m *Manifest, es []entry) (any, []entry) {
			m.Members[3].ImageDigest = "sha256:" + strings.Repeat("b", 64)
			return m, es
		}), Limits{}, ErrManifest, "members[3].image_digest"},
		{"snapshot name with a control character", mutate(func(m *Manifest, es []entry) (any, []entry) {
			m.Members[1].Snapshot.Name = "a\nb"
			return m, es
		}), Limits{}, ErrManifest, "members[1].snapshot.name"},
		{"too many snapshots", full, Limits{MaxSnapshots: 1}, ErrTooLarge, "more than 1 snapshots"},
	}
	_ = diskData
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, dir, err := extract(t, c.archive, c.limits)
			var ae *Error
			if !errors.Is(err, c.kind) || !errors.As(err, &ae) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v\nwant a %v error mentioning %q", err, c.kind, c.want)
			}
			t.Log(err)
			if names := dirEntries(t, dir); len(names) != 0 {
				t.Fatalf("a refused archive left %v", names)
			}
		})
	}
}

// tarOffsetOf returns the offset of the i-th tar header in b.
func tarOffsetOf(t *testing.T, b []byte, i int) int {
	t.Helper()
	off := 0
	for k := 0; ; k++ {
		if off+512 > len(b) {
			t.Fatalf("archive has fewer than %d members", i+1)
		}
		hdr, err := tar.NewReader(bytes.NewReader(b[off:])).Next()
		if err != nil {
			t.Fatal(err)
		}
		if k == i {
			return off
		}
		// PAX headers take blocks of their own; find the data size after them.
		data := off + 512
		if b[off+156] == tar.TypeXHeader {
			paxSize := int(parseOctal(b[off+124 : off+136]))
			data += (paxSize + 511) / 512 * 512
			data += 512
		}
		off = data + int(hdr.Size+511)/512*512
	}
}

func parseOctal(b []byte) int64 {
	var n int64
	for _, c := range b {
		if c >= '0' && c <= '7' {
			n = n*8 + int64(c-'0')
		}
	}
	return n
}

func rawTar(t *testing.T, es []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := e.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write(e.data)
	}
	tw.Close()
	return buf.Bytes()
}

func innerTar(t *testing.T, hdrs ...tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write(bytes.Repeat([]byte{'x'}, int(h.Size)))
		}
	}
	tw.Close()
	return buf.Bytes()
}

// setMember replaces member i's data with the compression of raw, keeping
// the manifest's sizes and checksum honest.
func setMember(t *testing.T, m *Manifest, es []entry, i int, raw []byte) {
	t.Helper()
	es[i].data = zstdBytes(t, raw)
	m.Members[i].Size = int64(len(raw))
	m.Members[i].CompressedSize = int64(len(es[i].data))
	m.Members[i].SHA256 = sha(raw)
}

// TestTruncationAnywhereIsRefused cuts the archive at many points; every
// cut is refused as truncation (or, cut inside the tar's end marker, as
// such), never accepted and never anything else.
func TestTruncationAnywhereIsRefused(t *testing.T) {
	full, _ := fullArchive(t)
	end := len(full) - 1024 // the tar end-of-archive marker
	for cut := 1; cut < end; cut += 4099 {
		_, dir, err := extract(t, full[:cut], Limits{})
		if !errors.Is(err, ErrTruncated) && !(cut < 512 && errors.Is(err, ErrNotArchive)) {
			t.Fatalf("archive cut at %d of %d: %v", cut, len(full), err)
		}
		if names := dirEntries(t, dir); len(names) != 0 {
			t.Fatalf("cut at %d left %v", cut, names)
		}
	}
	// The end marker itself is optional (streams cut exactly there still
	// hold every declared member).
	if _, _, err := extract(t, full[:end], Limits{}); err != nil {
		t.Fatalf("archive without its end marker: %v", err)
	}
}

func FuzzReader(f *testing.F) {
	// Small seeds: the fuzzer mutates every byte it is given.
	f.Add(minimalArchive(f))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		r, err := NewReader(bytes.NewReader(b), Limits{MaxDiskSize: 64 << 20, MaxImageSize: 64 << 20})
		if err != nil {
			return
		}
		ex, err := r.Extract(context.Background(), dir)
		if err != nil {
			if names := dirEntries(t, dir); len(names) != 0 {
				t.Fatalf("a refused archive left %v", names)
			}
			return
		}
		_ = ex.Remove()
	})
}
