package qcow2

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// requireTool fails the test (not skips) when an external tool is missing:
// CI installs qemu-utils, so a missing tool is a broken environment.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found in PATH: install qemu-utils (Debian) to run these tests: %v", name, err)
	}
	return p
}

func runTool(t testing.TB, name string, args ...string) string {
	t.Helper()
	requireTool(t, name)
	cmd := exec.Command(name, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// qemuIO runs qemu-io commands on an image and fails on any reported
// failure (qemu-io's exit status is not reliable for pattern checks).
func qemuIO(t testing.TB, path, format string, cmds ...string) string {
	t.Helper()
	args := []string{"-f", format}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	args = append(args, path)
	out := runTool(t, "qemu-io", args...)
	if strings.Contains(out, "failed") || strings.Contains(out, "Pattern verification") {
		t.Fatalf("qemu-io %v on %s: %s", cmds, path, out)
	}
	return out
}

type checkResult struct {
	Corruptions      int  `json:"corruptions"`
	Leaks            int  `json:"leaks"`
	CheckErrors      int  `json:"check-errors"`
	ImageEndOffset   int  `json:"image-end-offset"`
	AllocatedCluster int  `json:"allocated-clusters"`
	Compressed       int  `json:"compressed-clusters"`
	Fragmented       *int `json:"fragmented-clusters"`
}

// qemuCheck asserts that qemu-img check finds nothing wrong.
func qemuCheck(t testing.TB, path string) checkResult {
	t.Helper()
	requireTool(t, "qemu-img")
	out, err := exec.Command("qemu-img", "check", "--output=json", path).Output()
	if err != nil {
		human, _ := exec.Command("qemu-img", "check", path).CombinedOutput()
		t.Fatalf("qemu-img check %s: %v\n%s\n%s", path, err, out, human)
	}
	var r checkResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("parse qemu-img check output: %v\n%s", err, out)
	}
	if r.Corruptions != 0 || r.Leaks != 0 || r.CheckErrors != 0 {
		t.Fatalf("qemu-img check %s: %s", path, out)
	}
	return r
}

// qemuRaw returns the guest contents of an image as qemu-img sees them.
func qemuRaw(t testing.TB, path string) []byte {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "out.raw")
	runTool(t, "qemu-img", "convert", "-O", "raw", path, dst)
	b, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readAll reads the whole guest contents through our reader.
func readAll(t testing.TB, img *Image) []byte {
	t.Helper()
	buf := make([]byte, img.Size())
	if _, err := img.ReadAt(buf, 0); err != nil {
		t.Fatalf("ReadAt: %v", err)
	}
	return buf
}

func openRO(t testing.TB, path string) *Image {
	t.Helper()
	img, err := Open(path, OpenOptions{})
	if err != nil {
		t.Fatalf("Open %s: %v", path, err)
	}
	t.Cleanup(func() { img.Close() })
	return img
}

func mustCreate(t testing.TB, path string, opts CreateOptions) *Image {
	t.Helper()
	img, err := Create(path, opts)
	if err != nil {
		t.Fatalf("Create %s: %v", path, err)
	}
	return img
}

func mustWrite(t testing.TB, img *Image, p []byte, off int64) {
	t.Helper()
	if n, err := img.WriteAt(p, off); err != nil || n != len(p) {
		t.Fatalf("WriteAt(%d bytes at %d) = %d, %v", len(p), off, n, err)
	}
}

func mustClose(t testing.TB, img *Image) {
	t.Helper()
	if err := img.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func randBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

// diffAt reports the first differing offset, or -1.
func diffAt(a, b []byte) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return n
	}
	return -1
}

func assertSame(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if i := diffAt(got, want); i >= 0 {
		g, w := byte(0), byte(0)
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		t.Fatalf("%s: differs at byte %d (got %#x, want %#x; lengths %d, %d)", what, i, g, w, len(got), len(want))
	}
}

type qemuImageInfo struct {
	Filename            string `json:"filename"`
	Format              string `json:"format"`
	VirtualSize         int64  `json:"virtual-size"`
	ActualSize          int64  `json:"actual-size"`
	ClusterSize         int64  `json:"cluster-size"`
	BackingFilename     string `json:"backing-filename"`
	FullBackingFilename string `json:"full-backing-filename"`
	BackingFormat       string `json:"backing-filename-format"`
	DirtyFlag           bool   `json:"dirty-flag"`
}

// qemuInfo runs qemu-img info --backing-chain and returns the chain, top
// first.
func qemuInfo(t testing.TB, path string) []qemuImageInfo {
	t.Helper()
	out := runTool(t, "qemu-img", "info", "--output=json", "--backing-chain", path)
	var chain []qemuImageInfo
	if err := json.Unmarshal([]byte(out), &chain); err != nil {
		t.Fatalf("parse qemu-img info: %v\n%s", err, out)
	}
	return chain
}

func be32(b []byte, off int, v uint32) { binary.BigEndian.PutUint32(b[off:], v) }
func be64(b []byte, off int, v uint64) { binary.BigEndian.PutUint64(b[off:], v) }

// patchCopy copies src to name in the same directory, applies patch to
// the bytes, and returns the new path.
func patchCopy(t testing.TB, src, name string, patch func([]byte)) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	patch(b)
	p := filepath.Join(filepath.Dir(src), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func isProblem(err error, p Problem) bool {
	var fe *FormatError
	return errors.As(err, &fe) && fe.Problem == p
}

// memFile is an in-memory fileIO for parser tests and fuzzing (a test
// double for *os.File; the real file path is covered by every other test).
type memFile []byte

func (m memFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m)) {
		return 0, io.EOF
	}
	n := copy(p, m[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
func (m memFile) WriteAt(p []byte, off int64) (int, error) {
	return 0, errors.New("memFile is read-only")
}
func (m memFile) Sync() error  { return nil }
func (m memFile) Close() error { return nil }

// isInflateError reports a bad compressed cluster (Validate checks where
// compressed data lies, not that it inflates).
func isInflateError(err error) bool {
	return errors.Is(err, ErrCorrupt) && strings.Contains(err.Error(), "inflate")
}
