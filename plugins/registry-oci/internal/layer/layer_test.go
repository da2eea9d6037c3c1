package layer_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/errdefs"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/layer"
	ti "github.com/boxctl/boxctl/plugins/registry-oci/internal/testimages"
)

func TestCleanName(t *testing.T) {
	for in, want := range map[string]string{
		"a/b": "a/b", "./a/b/": "a/b", "/etc/x": "etc/x", "//x//y": "x/y", ".": "", "./": "", "/": "",
		"a/../b": "b", "a/./b": "a/b",
	} {
		got, err := layer.CleanName(in)
		if err != nil || got != want {
			t.Errorf("CleanName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"..", "../x", "a/../../x", "/../x", "./../x"} {
		if _, err := layer.CleanName(bad); err == nil {
			t.Errorf("CleanName(%q) accepted an escaping name", bad)
		}
	}
}

func TestScanAndEncode(t *testing.T) {
	for _, c := range []ti.Compression{ti.Gzip, ti.Zstd, ti.Uncompressed} {
		l := ti.NewLayer([]ti.Entry{
			ti.Dir("./"),
			ti.Dir("etc"),
			ti.File("etc/f", "hello"),
			ti.Symlink("etc/l", "/abs/target"),
			ti.Hardlink("etc/h", "/etc/f"),
			ti.CharDev("dev/c", 1, 2),
			ti.Fifo("p"),
			ti.Whiteout("old/thing"),
			ti.Opaque("etc"),
			ti.File(".wh..wh.plnk/123", ""),
		}, c)
		x, err := layer.Scan(bytes.NewReader(l.Blob()), l.MustDigest(), 0)
		if err != nil {
			t.Fatalf("%v: %v", c, err)
		}
		diff, _ := l.DiffID()
		if x.DiffID != diff {
			t.Errorf("diff id %s, want %s", x.DiffID, diff)
		}
		want := []layer.Entry{
			{Type: layer.Dir}, {Type: layer.Dir, Name: "etc"}, {Type: layer.Reg, Name: "etc/f", Size: 5},
			{Type: layer.Symlink, Name: "etc/l", Link: "/abs/target"}, {Type: layer.Hardlink, Name: "etc/h", Link: "etc/f"},
			{Type: layer.Char, Name: "dev/c"}, {Type: layer.Fifo, Name: "p"}, {Type: layer.Whiteout, Name: "old/thing"},
			{Type: layer.Opaque, Name: "etc"}, {Type: layer.Skip},
		}
		if !reflect.DeepEqual(x.Entries, want) {
			t.Errorf("%v entries\n got %+v\nwant %+v", c, x.Entries, want)
		}
		var buf bytes.Buffer
		if err := x.Encode(&buf); err != nil {
			t.Fatal(err)
		}
		y, err := layer.Decode(&buf)
		if err != nil || !reflect.DeepEqual(x, y) {
			t.Errorf("round trip: %+v, %v", y, err)
		}
	}
	if _, err := layer.Decode(bytes.NewReader([]byte("boxctl-layer-index-v0\n"))); !errors.Is(err, layer.ErrStaleIndex) {
		t.Errorf("stale index: %v", err)
	}
}

func TestScanRejects(t *testing.T) {
	d := v1.Hash{Algorithm: "sha256", Hex: "00"}
	for name, blob := range map[string][]byte{
		"dotdot":        ti.Tar([]ti.Entry{ti.File("../x", "")}),
		"unknown type":  ti.Tar([]ti.Entry{{Name: "v", Type: 'V'}}),
		"root not dir":  ti.Tar([]ti.Entry{ti.File(".", "")}),
		"garbage":       bytes.Repeat([]byte{7}, 1024),
		"empty symlink": ti.Tar([]ti.Entry{{Name: "s", Type: tar.TypeSymlink}}),
	} {
		_, err := layer.Scan(bytes.NewReader(blob), d, 0)
		var bad *layer.BadLayerError
		if !errors.Is(err, errdefs.ErrBadImage) || !errors.As(err, &bad) {
			t.Errorf("%s: %v, want a BadLayerError", name, err)
		}
	}
	if x, err := layer.Scan(bytes.NewReader(nil), d, 0); err != nil || len(x.Entries) != 0 {
		t.Errorf("empty layer: %v %v", x, err)
	}
}

// A PAX sparse entry counts with the size it declares, holes included,
// although the layer is tiny; Scan refuses it once over the limit.
func TestDeclaredSizeAndLimit(t *testing.T) {
	l := ti.FromTar(ti.SparseBomb("big", 8<<30), ti.Gzip)
	if n := len(l.Blob()); n > 2048 {
		t.Fatalf("the sparse layer is %d bytes; the test wants a tiny one", n)
	}
	x, err := layer.Scan(bytes.NewReader(l.Blob()), l.MustDigest(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(x.Entries) != 1 || x.Entries[0].Name != "big" || x.Entries[0].Type != layer.Reg || x.Entries[0].Size != 8<<30 {
		t.Fatalf("entries %+v, want one 8 GiB file named big", x.Entries)
	}
	if got, want := x.DeclaredSize(), int64(8<<30+layer.EntryOverhead); got != want {
		t.Errorf("declared size %d, want %d", got, want)
	}

	_, err = layer.Scan(bytes.NewReader(l.Blob()), l.MustDigest(), 1<<30)
	var tl *layer.TooLargeError
	if !errors.As(err, &tl) || !errors.Is(err, errdefs.ErrTooLarge) {
		t.Fatalf("scan with a 1 GiB limit: %v, want a TooLargeError", err)
	}
	for _, want := range []string{l.MustDigest().String(), `"big"`, "8GiB", "1GiB", "max_unpacked_size", `max_unpacked_size = "16GiB"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}

	// Across layers: each alone is under the limit, together they are not;
	// the layer that crosses it is named.
	small := func(n int) *layer.Index {
		var es []ti.Entry
		for i := 0; i < n; i++ {
			es = append(es, ti.File(fmt.Sprintf("f%d", i), strings.Repeat("x", 4096)))
		}
		l := ti.NewLayer(es, ti.Gzip)
		x, err := layer.Scan(bytes.NewReader(l.Blob()), l.MustDigest(), 0)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	xs := []*layer.Index{small(100), small(100), small(100)}
	ds := []v1.Hash{{Algorithm: "sha256", Hex: "11"}, {Algorithm: "sha256", Hex: "22"}, {Algorithm: "sha256", Hex: "33"}}
	limit := 2*xs[0].DeclaredSize() + 1
	err = layer.CheckDeclared(ds, xs, limit)
	if !errors.As(err, &tl) || tl.Position != 3 || tl.Layer != ds[2] {
		t.Fatalf("three layers over the limit: %v, want layer 3 named", err)
	}
	if !strings.Contains(err.Error(), "layer 3 of 3 (sha256:33)") {
		t.Errorf("error %q does not name layer 3", err)
	}
	if err := layer.CheckDeclared(ds[:2], xs[:2], limit); err != nil {
		t.Errorf("two layers under the limit: %v", err)
	}
}
