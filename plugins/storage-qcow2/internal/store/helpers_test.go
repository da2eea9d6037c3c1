package store_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/boxctl/boxctl/plugins/storage-qcow2/internal/store"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/sdktest"
)

// needTools fails the test when an external tool the cross-checks use is
// missing (the Makefile's deps target installs them).
func needTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if _, err2 := os.Stat("/usr/sbin/" + tool); err2 == nil {
				continue
			}
			t.Fatalf("%s not found: install qemu-utils and e2fsprogs (make deps): %v", tool, err)
		}
	}
}

func tool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return "/usr/sbin/" + name
}

// run runs a command and returns its combined output, failing the test if
// it fails.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(tool(name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// testEnv is a store served in-process through a real gRPC pair.
type testEnv struct {
	t     *testing.T
	ctx   context.Context
	dir   string
	disks sdk.DiskBackendClient
	snaps sdk.SnapshotBackendClient
}

// newEnv serves a fresh store on dir (a new temp dir when "") and checks
// when the test ends that the store is consistent and every qcow2 file in
// it passes qemu-img check.
func newEnv(t *testing.T, dir string, body string, opts ...store.Option) *testEnv {
	t.Helper()
	needTools(t, "qemu-img", "qemu-io", "mkfs.ext4")
	if dir == "" {
		dir = filepath.Join(t.TempDir(), "qcow2")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	s := store.New(opts...)
	c := sdktest.Serve(t, sdk.ServeConfig{Disks: s, Snapshots: s})
	cfg := &sdk.Config{StateDir: dir, Body: []byte(body), Filename: "test.hcl"}
	// One Configure serves both roles: they are one implementation.
	if err := c.Disks.Configure(ctx, cfg); err != nil {
		t.Fatalf("Configure: %v", err)
	}
	e := &testEnv{t: t, ctx: ctx, dir: dir, disks: c.Disks, snaps: c.Snapshots}
	t.Cleanup(func() {
		if !t.Failed() {
			checkStore(t, dir)
		}
	})
	return e
}

// checkStore fails unless store.Check finds nothing and every qcow2 file
// passes qemu-img check.
func checkStore(t testing.TB, dir string) {
	t.Helper()
	problems, err := store.Check(context.Background(), dir)
	if err != nil {
		t.Fatalf("store.Check: %v", err)
	}
	for _, p := range problems {
		t.Errorf("store inconsistent: %s", p)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "disks", "*.qcow2"))
	bases, _ := filepath.Glob(filepath.Join(dir, "bases", "*.qcow2"))
	for _, f := range append(files, bases...) {
		out, err := exec.Command(tool("qemu-img"), "check", "-f", "qcow2", f).CombinedOutput()
		if err != nil {
			t.Errorf("qemu-img check %s: %v\n%s", f, err, out)
		}
	}
}

// qemuInfo is one element of `qemu-img info --backing-chain --output=json`.
type qemuInfo struct {
	Filename            string `json:"filename"`
	Format              string `json:"format"`
	VirtualSize         uint64 `json:"virtual-size"`
	ActualSize          uint64 `json:"actual-size"`
	BackingFilename     string `json:"backing-filename"`
	FullBackingFilename string `json:"full-backing-filename"`
}

func qemuChain(t testing.TB, path string) []qemuInfo {
	t.Helper()
	out := run(t, "qemu-img", "info", "--backing-chain", "--output=json", path)
	var chain []qemuInfo
	if err := json.Unmarshal([]byte(out), &chain); err != nil {
		t.Fatalf("parse qemu-img info: %v\n%s", err, out)
	}
	return chain
}

// qemuWrite writes length bytes of pattern at off through qemu-io.
func qemuWrite(t testing.TB, path string, off, length int64, pattern byte) {
	t.Helper()
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P "+itoa(int64(pattern))+" "+itoa(off)+" "+itoa(length), path)
}

// qemuReads reports whether [off, off+length) reads as pattern.
func qemuReads(t testing.TB, path string, off, length int64, pattern byte) bool {
	t.Helper()
	out, err := exec.Command(tool("qemu-io"), "-r", "-f", "qcow2", "-c", "read -P "+itoa(int64(pattern))+" "+itoa(off)+" "+itoa(length), path).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "Pattern verification failed") {
		t.Fatalf("qemu-io read %s: %v\n%s", path, err, out)
	}
	return err == nil && !strings.Contains(string(out), "failed")
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }
