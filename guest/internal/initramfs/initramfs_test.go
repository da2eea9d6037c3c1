package initramfs

import (
	"bytes"
	"compress/gzip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestArchiveReadableByCpio checks the writer against GNU cpio.
func TestArchiveReadableByCpio(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Fatal("cpio is not installed (apt-get install cpio)")
	}
	a := NewArchive()
	a.Add(Entry{Path: "init", Mode: ModeRegular | 0o755, Data: []byte("#!/bin/sh\n")})
	a.Add(Entry{Path: "lib/modules/6.1.0/kernel/x.ko", Mode: ModeRegular | 0o644, Data: []byte("abc")})
	a.Add(Entry{Path: "dev/console", Mode: ModeChar | 0o600, Major: 5, Minor: 1})
	a.Add(Entry{Path: "bin/sh", Mode: ModeSymlink | 0o777, Data: []byte("busybox")})
	var buf bytes.Buffer
	if _, err := a.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.Command("cpio", "-idm", "--quiet")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(buf.Bytes())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v: %s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "lib/modules/6.1.0/kernel/x.ko")); err != nil || string(b) != "abc" {
		t.Errorf("x.ko = %q, %v", b, err)
	}
	if target, err := os.Readlink(filepath.Join(dir, "bin/sh")); err != nil || target != "busybox" {
		t.Errorf("bin/sh -> %q, %v", target, err)
	}
	fi, err := os.Stat(filepath.Join(dir, "init"))
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("init: %v, %v", fi, err)
	}
	fi, err = os.Lstat(filepath.Join(dir, "dev/console"))
	if os.Geteuid() == 0 && (err != nil || fi.Mode()&os.ModeCharDevice == 0) {
		t.Errorf("dev/console: %v, %v", fi, err)
	}

	var again bytes.Buffer
	a.WriteTo(&again)
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("archive output is not deterministic")
	}
}

func TestModulesDepAndStripSignature(t *testing.T) {
	sel := &ModuleSelection{Modules: []Module{
		{Name: "virtio", Path: "kernel/virtio.ko"},
		{Name: "virtio_ring", Path: "kernel/virtio_ring.ko", Deps: []string{"virtio"}},
		{Name: "virtio_blk", Path: "kernel/virtio_blk.ko", Deps: []string{"virtio_ring", "virtio"}},
	}}
	want := "kernel/virtio.ko:\nkernel/virtio_ring.ko: kernel/virtio.ko\nkernel/virtio_blk.ko: kernel/virtio_ring.ko kernel/virtio.ko\n"
	if got := string(ModulesDep(sel)); got != want {
		t.Errorf("modules.dep:\n%s\nwant:\n%s", got, want)
	}

	body := []byte("\x7fELF module body")
	sig := bytes.Repeat([]byte{0xAB}, 300)
	info := []byte{0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x2C} // sig_len 300, PKCS#7
	signed := append(append(append(append([]byte{}, body...), sig...), info...), []byte(sigMagic)...)
	got, err := StripSignature(signed)
	if err != nil || !bytes.Equal(got, body) {
		t.Errorf("StripSignature = %q, %v", got, err)
	}
	if got, _ := StripSignature(body); !bytes.Equal(got, body) {
		t.Error("unsigned module changed")
	}
	if _, err := StripSignature([]byte("x" + sigMagic)); err == nil {
		t.Error("truncated signature accepted")
	}
}

func TestReadCompressedModule(t *testing.T) {
	dir := t.TempDir()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("module"))
	zw.Close()
	p := filepath.Join(dir, "m.ko.gz")
	if err := os.WriteFile(p, gz.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := readModule(p)
	if err != nil || string(b) != "module" {
		t.Errorf("readModule = %q, %v", b, err)
	}
	if uncompressedPath("kernel/a/m.ko.zst") != "kernel/a/m.ko" || ModuleName("x/crc32c-intel.ko.xz") != "crc32c_intel" {
		t.Error("name handling")
	}
}

func TestBuildRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	notELF := filepath.Join(dir, "agent")
	os.WriteFile(notELF, []byte("#!/bin/sh"), 0o755)
	if _, err := Build(&bytes.Buffer{}, Options{Agent: notELF}); err == nil || !strings.Contains(err.Error(), "not an ELF") {
		t.Errorf("non-ELF agent: %v", err)
	}
	self, _ := os.Executable()
	if _, err := Build(&bytes.Buffer{}, Options{Agent: self, Compression: "lzma"}); err == nil {
		t.Error("unknown compression accepted")
	}
	var out bytes.Buffer
	if _, err := Build(&out, Options{Agent: self, Compression: "gzip"}); err != nil {
		t.Fatal(err)
	}
	if _, err := gzip.NewReader(&out); err != nil {
		t.Errorf("gzip output unreadable: %v", err)
	}
}
