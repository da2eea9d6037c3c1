package agent

import (
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

// TestRewriteGeneratedEtc: the host name files get the new name in place (a bind mount
// holds the inode: a replaced file would not be seen in the box), resolv.conf is untouched,
// and missing files (no box root) are no error.
func TestRewriteGeneratedEtc(t *testing.T) {
	dir := t.TempDir()
	for name, content := range generatedFiles("old", []string{"10.0.2.3"}) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	before := map[string]os.FileInfo{}
	for _, name := range []string{"hostname", "hosts"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		before[name] = fi
	}
	if err := rewriteGeneratedEtc(dir, "new-name"); err != nil {
		t.Fatal(err)
	}
	want := generatedFiles("new-name", []string{"10.0.2.3"})
	want["resolv.conf"] = generatedFiles("old", []string{"10.0.2.3"})["resolv.conf"]
	for name, content := range want {
		path := filepath.Join(dir, name)
		b, err := os.ReadFile(path)
		if err != nil || string(b) != content {
			t.Errorf("%s = %q %v, want %q", name, b, err, content)
		}
		if fi, err := os.Stat(path); before[name] != nil && (err != nil || !os.SameFile(fi, before[name])) {
			t.Errorf("%s was replaced, not rewritten: the box's bind mount would keep the old name", name)
		}
	}
	if err := rewriteGeneratedEtc(filepath.Join(dir, "missing"), "x"); err != nil {
		t.Errorf("no generated files: %v", err)
	}
}

func TestRandPoolInfo(t *testing.T) {
	b := []byte{1, 2, 3, 4, 5}
	info := randPoolInfo(b)
	if len(info) != 8+8 {
		t.Fatalf("len %d, want the header and two words", len(info))
	}
	if bits, size := binary.NativeEndian.Uint32(info[0:]), binary.NativeEndian.Uint32(info[4:]); bits != 40 || size != 5 {
		t.Errorf("entropy_count %d, buf_size %d; want 40 bits of 5 bytes", bits, size)
	}
	if string(info[8:13]) != string(b) || info[13] != 0 {
		t.Errorf("buf = %v", info[8:])
	}
}

func TestArpRequest(t *testing.T) {
	req := arpRequest(neighbour{addr: netip.MustParseAddr("10.0.2.2"), dev: "eth0"})
	if len(req) != 68 {
		t.Fatalf("struct arpreq is 68 bytes, got %d", len(req))
	}
	if fam := binary.NativeEndian.Uint16(req); fam != 2 || string(req[4:8]) != "\x0a\x00\x02\x02" {
		t.Errorf("arp_pa = %v", req[:16])
	}
	if string(req[52:56]) != "eth0" || req[56] != 0 {
		t.Errorf("arp_dev = %q", req[52:])
	}
}

func TestReadNeighbours(t *testing.T) {
	path := filepath.Join(t.TempDir(), "arp")
	table := "IP address       HW type     Flags       HW address            Mask     Device\n" +
		"10.0.2.2         0x1         0x2         52:55:0a:00:02:02     *        eth0\n" +
		"10.0.2.3         0x1         0x2         52:55:0a:00:02:03     *        eth1\n" +
		"garbage\n"
	if err := os.WriteFile(path, []byte(table), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := readNeighbours(path)
	if err != nil || len(got) != 2 || got[0].addr.String() != "10.0.2.2" || got[1].dev != "eth1" {
		t.Errorf("got %+v %v", got, err)
	}
	if err := flushNeighbours(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Error("a missing table was no error")
	}
}
