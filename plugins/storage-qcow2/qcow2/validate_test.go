package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// layout locates the structures of a small test image, from its bytes.
type layout struct {
	h      *header
	cs     int64
	l1     int64 // L1 table offset
	l2     int64 // first L2 table
	data   []int64
	rt     int64   // refcount table
	rb     int64   // first refcount block
	l2ents []int64 // file offsets of allocated L2 entries
}

func parseLayout(t *testing.T, b []byte) layout {
	t.Helper()
	h, err := readHeader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	l := layout{h: h, cs: h.clusterSize(), l1: int64(h.l1TableOffset), rt: int64(h.refcountTableOffset)}
	l.rb = int64(be.Uint64(b[l.rt:]))
	l.l2 = int64(be.Uint64(b[l.l1:]) & offsetMask)
	if l.l2 == 0 {
		t.Fatal("test image has no L2 table")
	}
	for j := int64(0); j < l.cs/8; j++ {
		e := be.Uint64(b[l.l2+j*8:])
		if e&offsetMask != 0 && e&oflagCompressed == 0 {
			l.data = append(l.data, int64(e&offsetMask))
			l.l2ents = append(l.l2ents, l.l2+j*8)
		}
	}
	if len(l.data) < 2 {
		t.Fatal("test image needs two data clusters")
	}
	return l
}

func (l layout) setRefcount(b []byte, off int64, v uint16) {
	binary.BigEndian.PutUint16(b[l.rb+off/l.cs*2:], v)
}

func validateBytes(t *testing.T, name string, b []byte, opts ValidateOptions) error {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return Validate(p, opts)
}

func TestValidateAcceptsGoodImages(t *testing.T) {
	dir := t.TempDir()
	ours := filepath.Join(dir, "ours.qcow2")
	img := mustCreate(t, ours, CreateOptions{Size: 64 << 20, ClusterSize: 512, RefcountBits: 8})
	mustWrite(t, img, randBytes(1, 4<<20), 1000) // grows the refcount table
	mustClose(t, img)
	if err := Validate(ours, ValidateOptions{}); err != nil {
		t.Errorf("our image: %v", err)
	}
	raw := filepath.Join(dir, "x.raw")
	data := bytes.Repeat([]byte("compress me "), 300000)
	os.WriteFile(raw, data, 0o644)
	for _, args := range [][]string{
		{"convert", "-c", "-O", "qcow2", raw},
		{"convert", "-c", "-O", "qcow2", "-o", "cluster_size=512", raw},
		{"convert", "-O", "qcow2", "-o", "compat=0.10", raw},
		{"convert", "-O", "qcow2", "-o", "refcount_bits=1", raw},
	} {
		p := filepath.Join(dir, "q.qcow2")
		os.Remove(p)
		runTool(t, "qemu-img", append(args, p)...)
		qemuIO(t, p, "qcow2", "write -z 64k 64k", "write -P 3 1M 3000")
		if err := Validate(p, ValidateOptions{}); err != nil {
			t.Errorf("qemu-img %v: %v", args, err)
		}
	}
}

func TestValidateRejects(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, cs int) []byte {
		p := filepath.Join(dir, name)
		img := mustCreate(t, p, CreateOptions{Size: 1 << 20, ClusterSize: cs})
		mustWrite(t, img, fill(1, 3*cs), 0)
		mustClose(t, img)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good512 := mk("g512.qcow2", 512)
	good4k := mk("g4k.qcow2", 4096)

	cases := []struct {
		name    string
		base    []byte
		patch   func(l layout, b []byte) []byte
		opts    ValidateOptions
		problem Problem
		err     error
	}{
		{"not qcow2", good512, func(l layout, b []byte) []byte { b[0] = 'X'; return b }, ValidateOptions{}, ProblemNotQcow2, ErrNotQcow2},
		{"truncated header", good512, func(l layout, b []byte) []byte { return b[:50] }, ValidateOptions{}, ProblemHeader, ErrCorrupt},
		{"encrypted", good512, func(l layout, b []byte) []byte { be32(b, 32, 1); return b }, ValidateOptions{}, ProblemEncrypted, ErrUnsupported},
		{"unknown incompatible feature", good512, func(l layout, b []byte) []byte { be64(b, 72, 1<<9); return b }, ValidateOptions{}, ProblemUnsupported, ErrUnsupported},
		{"external data bit", good512, func(l layout, b []byte) []byte { be64(b, 72, 1<<2); return b }, ValidateOptions{}, ProblemExternalData, ErrUnsupported},
		{"virtual size over cap", good512, func(l layout, b []byte) []byte { return b }, ValidateOptions{MaxVirtualSize: 512 << 10}, ProblemTooLarge, ErrTooLarge},
		{"absurd virtual size", good512, func(l layout, b []byte) []byte { be64(b, 24, 1<<62); return b }, ValidateOptions{}, ProblemTooLarge, ErrTooLarge},
		{"L1 larger than file", good512, func(l layout, b []byte) []byte {
			be64(b, 24, 1<<32)
			be32(b, 36, 1<<17)
			return b
		}, ValidateOptions{}, ProblemOutsideFile, ErrCorrupt},
		{"L1 too small for size", good512, func(l layout, b []byte) []byte { be32(b, 36, 1); return b }, ValidateOptions{}, ProblemHeader, ErrCorrupt},
		{"refcount table beyond file", good512, func(l layout, b []byte) []byte { be32(b, 56, 1000); return b }, ValidateOptions{}, ProblemOutsideFile, ErrCorrupt},
		{"refcount table absurd", good512, func(l layout, b []byte) []byte { be32(b, 56, 1<<30); return b }, ValidateOptions{}, ProblemTooLarge, ErrTooLarge},
		{"misaligned L1 table offset", good4k, func(l layout, b []byte) []byte { be64(b, 40, uint64(l.l1+512)); return b }, ValidateOptions{}, ProblemMisaligned, ErrCorrupt},
		{"misaligned L2 offset", good4k, func(l layout, b []byte) []byte { be64(b[l.l1:], 0, uint64(l.l2+512)|oflagCopied); return b }, ValidateOptions{}, ProblemMisaligned, ErrCorrupt},
		{"misaligned data offset", good4k, func(l layout, b []byte) []byte {
			be64(b[l.l2ents[0]:], 0, uint64(l.data[0]+1024)|oflagCopied)
			return b
		}, ValidateOptions{}, ProblemMisaligned, ErrCorrupt},
		{"misaligned refcount block", good4k, func(l layout, b []byte) []byte { be64(b, int(l.rt), uint64(l.rb+512)); return b }, ValidateOptions{}, ProblemMisaligned, ErrCorrupt},
		{"L1 entry beyond file", good512, func(l layout, b []byte) []byte { be64(b, int(l.l1), 1<<40|oflagCopied); return b }, ValidateOptions{}, ProblemOutsideFile, ErrCorrupt},
		{"L2 entry beyond file", good512, func(l layout, b []byte) []byte { be64(b, int(l.l2ents[1]), 1<<40|oflagCopied); return b }, ValidateOptions{}, ProblemOutsideFile, ErrCorrupt},
		{"compressed data beyond file", good512, func(l layout, b []byte) []byte { be64(b, int(l.l2ents[1]), 1<<40|oflagCompressed); return b }, ValidateOptions{}, ProblemOutsideFile, ErrCorrupt},
		{"refcount block beyond file", good512, func(l layout, b []byte) []byte { be64(b, int(l.rt)+8, 1<<40); return b }, ValidateOptions{}, ProblemOutsideFile, ErrCorrupt},
		{"L1 reserved bits", good512, func(l layout, b []byte) []byte { b[l.l1] |= 0x10; return b }, ValidateOptions{}, ProblemInvalidEntry, ErrCorrupt},
		{"L2 reserved bits", good512, func(l layout, b []byte) []byte { b[l.l2ents[0]+7] |= 0x02; return b }, ValidateOptions{}, ProblemInvalidEntry, ErrCorrupt},
		{"L2 table is the refcount table", good512, func(l layout, b []byte) []byte { be64(b, int(l.l1), uint64(l.rt)|oflagCopied); return b }, ValidateOptions{}, ProblemOverlap, ErrCorrupt},
		{"L1 table overlaps refcount table", good512, func(l layout, b []byte) []byte { be64(b, 40, uint64(l.rt)); return b }, ValidateOptions{}, ProblemOverlap, ErrCorrupt},
		{"data cluster is the L1 table", good512, func(l layout, b []byte) []byte { be64(b, int(l.l2ents[0]), uint64(l.l1)|oflagCopied); return b }, ValidateOptions{}, ProblemOverlap, ErrCorrupt},
		{"compressed data in the header", good512, func(l layout, b []byte) []byte { be64(b, int(l.l2ents[0]), 100|oflagCompressed); return b }, ValidateOptions{}, ProblemOverlap, ErrCorrupt},
		{"refcount block is an L2 table", good512, func(l layout, b []byte) []byte { be64(b, int(l.rt)+8, uint64(l.l2)); return b }, ValidateOptions{}, ProblemOverlap, ErrCorrupt},
		{"cluster referenced twice", good512, func(l layout, b []byte) []byte {
			be64(b, int(l.l2ents[1]), uint64(l.data[0])|oflagCopied)
			return b
		}, ValidateOptions{}, ProblemDoubleReference, ErrCorrupt},
		{"refcount too low", good512, func(l layout, b []byte) []byte { l.setRefcount(b, l.data[1], 0); return b }, ValidateOptions{}, ProblemRefcountMismatch, ErrCorrupt},
		{"refcount too high", good512, func(l layout, b []byte) []byte { l.setRefcount(b, l.data[1], 2); return b }, ValidateOptions{}, ProblemRefcountMismatch, ErrCorrupt},
		{"leaked cluster", good512, func(l layout, b []byte) []byte {
			n := int64(len(b))
			b = append(b, make([]byte, 512)...)
			l.setRefcount(b, n, 1)
			return b
		}, ValidateOptions{}, ProblemLeak, ErrCorrupt},
		{"refcount beyond end of file", good512, func(l layout, b []byte) []byte { l.setRefcount(b, int64(len(b))+10*512, 1); return b }, ValidateOptions{}, ProblemLeak, ErrCorrupt},
		{"no refcount block for used cluster", good512, func(l layout, b []byte) []byte { be64(b, int(l.rt), 0); return b }, ValidateOptions{}, ProblemRefcountMismatch, ErrCorrupt},
		{"snapshots", good512, func(l layout, b []byte) []byte { be32(b, 60, 1); return b }, ValidateOptions{}, ProblemUnsupported, ErrUnsupported},
		{"dirty", good512, func(l layout, b []byte) []byte { be64(b, 72, 1); return b }, ValidateOptions{}, ProblemUnsupported, ErrUnsupported},
		{"bitmaps", good512, func(l layout, b []byte) []byte { be64(b, 88, 1); return b }, ValidateOptions{}, ProblemUnsupported, ErrUnsupported},
		{"extension overruns header", good512, func(l layout, b []byte) []byte {
			be32(b, 112, 0x12345678)
			be32(b, 116, 5000)
			return b
		}, ValidateOptions{}, ProblemHeader, ErrCorrupt},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := append([]byte(nil), c.base...)
			l := parseLayout(t, b)
			b = c.patch(l, b)
			err := validateBytes(t, "bad.qcow2", b, c.opts)
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("got %v, want a FormatError %v", err, c.problem)
			}
			if fe.Problem != c.problem || !errors.Is(err, c.err) {
				t.Fatalf("got %v (problem %v), want problem %v wrapping %v", err, fe.Problem, c.problem, c.err)
			}
			t.Log(err)
			// Open must not panic either, and must not hand out garbage
			// for the header problems it also checks.
			if img, err := newImage(memFile(b), int64(len(b)), OpenOptions{}); err == nil {
				buf := make([]byte, 4096)
				img.ReadAt(buf, 0)
			}
		})
	}
}

func TestValidateBackingAndDataFile(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	mustClose(t, mustCreate(t, base, CreateOptions{Size: 1 << 20}))
	top := filepath.Join(dir, "top.qcow2")
	mustClose(t, mustCreate(t, top, CreateOptions{BackingFile: "/etc/shadow", BackingFormat: "raw", Size: 1 << 20}))
	if err := Validate(top, ValidateOptions{}); !isProblem(err, ProblemBackingFile) || !errors.Is(err, ErrBackingFile) {
		t.Errorf("backing file: %v", err)
	}
	df := filepath.Join(dir, "df.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file="+filepath.Join(dir, "df.raw"), df, "1M")
	if err := Validate(df, ValidateOptions{}); !isProblem(err, ProblemExternalData) {
		t.Errorf("external data file: %v", err)
	}
	snap := filepath.Join(dir, "snap.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", snap, "1M")
	runTool(t, "qemu-img", "snapshot", "-c", "s1", snap)
	if err := Validate(snap, ValidateOptions{}); !isProblem(err, ProblemUnsupported) {
		t.Errorf("internal snapshot: %v", err)
	}
	bm := filepath.Join(dir, "bm.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", bm, "1M")
	runTool(t, "qemu-img", "bitmap", "--add", bm, "b0")
	if err := Validate(bm, ValidateOptions{}); !isProblem(err, ProblemUnsupported) {
		t.Errorf("dirty bitmap: %v", err)
	}
}
