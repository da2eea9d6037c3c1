package layer_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"reflect"
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
		x, err := layer.Scan(bytes.NewReader(l.Blob()), l.MustDigest())
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
		_, err := layer.Scan(bytes.NewReader(blob), d)
		var bad *layer.BadLayerError
		if !errors.Is(err, errdefs.ErrBadImage) || !errors.As(err, &bad) {
			t.Errorf("%s: %v, want a BadLayerError", name, err)
		}
	}
	if x, err := layer.Scan(bytes.NewReader(nil), d); err != nil || len(x.Entries) != 0 {
		t.Errorf("empty layer: %v %v", x, err)
	}
}
