package layer

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// indexMagic starts every encoded index; bump it when Entry semantics change
// so stale indexes are rebuilt instead of misread.
const indexMagic = "boxctl-layer-index-v1\n"

// Encode writes x in a compact binary form.
func (x *Index) Encode(w io.Writer) error {
	bw := bufio.NewWriter(w)
	var tmp [binary.MaxVarintLen64]byte
	putU := func(v uint64) { bw.Write(tmp[:binary.PutUvarint(tmp[:], v)]) }
	putS := func(s string) { putU(uint64(len(s))); bw.WriteString(s) }
	bw.WriteString(indexMagic)
	putS(x.DiffID.String())
	putU(uint64(x.UncompressedSize))
	putS(string(x.Compression))
	putU(uint64(len(x.Entries)))
	for _, e := range x.Entries {
		bw.WriteByte(byte(e.Type))
		putS(e.Name)
		putS(e.Link)
		putU(uint64(e.Size))
	}
	return bw.Flush()
}

// ErrStaleIndex: the encoded index has another format version.
var ErrStaleIndex = errors.New("layer index has an old format")

// Decode reads an index written by Encode.
func Decode(r io.Reader) (*Index, error) {
	br := bufio.NewReader(r)
	magic := make([]byte, len(indexMagic))
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != indexMagic {
		return nil, ErrStaleIndex
	}
	var err error
	getU := func() uint64 {
		if err != nil {
			return 0
		}
		var v uint64
		v, err = binary.ReadUvarint(br)
		return v
	}
	getS := func() string {
		n := getU()
		if err != nil {
			return ""
		}
		if n > 1<<20 {
			err = fmt.Errorf("string of %d bytes", n)
			return ""
		}
		b := make([]byte, n)
		_, err = io.ReadFull(br, b)
		return string(b)
	}
	x := &Index{}
	diff := getS()
	x.UncompressedSize = int64(getU())
	x.Compression = Compression(getS())
	n := getU()
	if err == nil && n > 1<<28 {
		err = fmt.Errorf("%d entries", n)
	}
	if err != nil {
		return nil, fmt.Errorf("decode layer index: %w", err)
	}
	if x.DiffID, err = v1.NewHash(diff); err != nil {
		return nil, fmt.Errorf("decode layer index: %w", err)
	}
	x.Entries = make([]Entry, 0, n)
	for i := uint64(0); i < n; i++ {
		var t byte
		if t, err = br.ReadByte(); err != nil {
			break
		}
		e := Entry{Type: Type(t), Name: getS(), Link: getS(), Size: int64(getU())}
		if e.Type > Opaque {
			err = fmt.Errorf("entry type %d", t)
		}
		if err != nil {
			break
		}
		x.Entries = append(x.Entries, e)
	}
	if err != nil {
		return nil, fmt.Errorf("decode layer index: %w", err)
	}
	return x, nil
}
