package testimages

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
)

// Hostile layers: tiny blobs that unpack to far more than they weigh.

// ZeroBomb is a gzip layer holding one file, name, of size zero bytes
// (size a multiple of 1 MiB). It is built as concatenated gzip members
// (which every gzip reader reads as one stream), so making a 1 GiB bomb
// costs one compression of 1 MiB; its blob is about size/1000.
func ZeroBomb(name string, size int64) *Layer {
	const chunk = 1 << 20
	if size%chunk != 0 {
		panic("testimages: ZeroBomb size must be a multiple of 1 MiB")
	}
	zero := make([]byte, chunk)
	hdr := ustarHeader(name, '0', size)
	member := func(b []byte) []byte {
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		zw.Write(b)
		zw.Close()
		return buf.Bytes()
	}
	zeros := member(zero)
	var blob bytes.Buffer
	blob.Write(member(hdr))
	h := sha256.New()
	h.Write(hdr)
	for n := int64(0); n < size; n += chunk {
		blob.Write(zeros)
		h.Write(zero)
	}
	end := make([]byte, 1024) // the end-of-archive marker
	blob.Write(member(end))
	h.Write(end)
	return &Layer{blob: blob.Bytes(), mt: types.OCILayer, diffID: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}}
}

// SparseBomb is an uncompressed tar with one PAX sparse file (format 1.0,
// as GNU tar writes it) named name that declares realSize bytes, all of
// them a hole but the first five, "hello". The tar itself is 2.5 KiB.
func SparseBomb(name string, realSize int64) []byte {
	recs := paxRecord("GNU.sparse.major", "1") + paxRecord("GNU.sparse.minor", "0") +
		paxRecord("GNU.sparse.name", name) + paxRecord("GNU.sparse.realsize", strconv.FormatInt(realSize, 10))
	sparseMap := pad([]byte("1\n0\n5\n")) // one data region: offset 0, length 5
	data := append(sparseMap, pad([]byte("hello"))...)
	var out bytes.Buffer
	out.Write(ustarHeader("PaxHeaders/"+name, 'x', int64(len(recs))))
	out.Write(pad([]byte(recs)))
	out.Write(ustarHeader("GNUSparseFile.0/"+name, '0', int64(len(sparseMap)+5)))
	out.Write(data)
	out.Write(make([]byte, 1024))
	return out.Bytes()
}

func paxRecord(k, v string) string {
	// The length at the front counts itself.
	size := len(k) + len(v) + 3
	size += len(strconv.Itoa(size))
	rec := strconv.Itoa(size) + " " + k + "=" + v + "\n"
	if len(rec) != size {
		rec = strconv.Itoa(len(rec)) + " " + k + "=" + v + "\n"
	}
	return rec
}

func pad(b []byte) []byte {
	if r := len(b) % 512; r != 0 {
		b = append(b, make([]byte, 512-r)...)
	}
	return b
}

// ustarHeader is a raw ustar header block, written by hand because
// archive/tar refuses to write the headers hostile layers need.
func ustarHeader(name string, typeflag byte, size int64) []byte {
	h := make([]byte, 512)
	copy(h[0:100], name)
	copy(h[100:108], "0000644\x00")
	copy(h[108:116], "0000000\x00")
	copy(h[116:124], "0000000\x00")
	copy(h[124:136], fmt.Sprintf("%011o\x00", size))
	copy(h[136:148], fmt.Sprintf("%011o\x00", Epoch.Unix()))
	h[156] = typeflag
	copy(h[257:263], "ustar\x00")
	copy(h[263:265], "00")
	copy(h[148:156], "        ")
	var sum int
	for _, c := range h {
		sum += int(c)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return h
}
