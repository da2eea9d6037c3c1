// Package testbin builds boxctl's binaries (the CLI, the plugins and the
// test-double plugins) for tests that need real processes. Binaries are
// built once per test binary into one directory, which then looks like an
// installation: boxctl with its plugins next to it.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// Packages maps binary names to their package paths (relative to the
// module root).
var Packages = map[string]string{
	"boxctl":                    "./cmd/boxctl",
	"boxctl-plugin-procvmm":     "./test/plugins/procvmm",
	"boxctl-plugin-badproto":    "./test/plugins/badproto",
	"boxctl-plugin-qemu":        "./plugins/qemu",
	"boxctl-plugin-qcow2":       "./plugins/storage-qcow2",
	"boxctl-plugin-oci":         "./plugins/registry-oci",
	"boxctl-plugin-libkrun":     "./plugins/libkrun",
	"containerd-shim-boxctl-v2": "./cmd/containerd-shim-boxctl-v2",
}

// Dir builds the named binaries (keys of Packages) once and returns the
// directory holding them. It fails the test if a build fails.
func (s *Set) Dir(t testing.TB, names ...string) string {
	t.Helper()
	s.once.Do(func() {
		s.dir, s.err = os.MkdirTemp("", "boxctl-bin-")
	})
	if s.err != nil {
		t.Fatalf("test binaries: %v", s.err)
	}
	root := ModuleRoot(t)
	for _, name := range names {
		s.mu.Lock()
		done := s.built[name]
		s.mu.Unlock()
		if done {
			continue
		}
		pkg, ok := Packages[name]
		if !ok {
			t.Fatalf("testbin: unknown binary %q", name)
		}
		out := filepath.Join(s.dir, name)
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", name, err, b)
		}
		s.mu.Lock()
		if s.built == nil {
			s.built = map[string]bool{}
		}
		s.built[name] = true
		s.mu.Unlock()
	}
	return s.dir
}

// Set is a set of built binaries; declare one per test package (in a
// package-level var of the test) and remove it in TestMain with Cleanup.
type Set struct {
	once  sync.Once
	mu    sync.Mutex
	dir   string
	err   error
	built map[string]bool
}

// Cleanup removes the built binaries.
func (s *Set) Cleanup() {
	if s.dir != "" {
		_ = os.RemoveAll(s.dir)
	}
}

// ModuleRoot returns the directory holding go.mod.
func ModuleRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("testbin: cannot locate source")
	}
	dir := filepath.Dir(file)
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("testbin: go.mod not found")
		}
		dir = parent
	}
}

// ShortTempDir returns a fresh directory with a short path, removed when
// the test ends. Unix socket paths are limited to 107 bytes, and t.TempDir
// paths (which include the test name) can be long.
func ShortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// WriteFile writes content to dir/name and returns the path.
func WriteFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(strings.TrimLeft(content, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Must fails the test on err.
func Must(t testing.TB, err error, what string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(what, args...), err)
	}
}
