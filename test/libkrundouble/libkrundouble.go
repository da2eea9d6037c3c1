// Package libkrundouble builds and reads a TEST DOUBLE of libkrun: the C
// shared library in libkrun_double.c (which implements the libkrun 1.x
// symbols boxctl-plugin-libkrun uses, records every call, fails calls on
// request and runs a stand-in guest in place of a VM; its settings are
// documented there) and that stand-in guest (package guest, which serves
// the agent double of test/agentdouble on the vsock-mapped socket). Tests
// use it where the real libkrun cannot run: on machines without it or
// without a usable KVM.
package libkrundouble

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Environment variables the double reads (see c/libkrun_double.c).
const (
	EnvLog   = "KRUN_DOUBLE_LOG"
	EnvFail  = "KRUN_DOUBLE_FAIL"
	EnvGuest = "KRUN_DOUBLE_GUEST"
	EnvExit  = "KRUN_DOUBLE_EXIT"
	// EnvGuestExitAfter and EnvGuestExitCode make the stand-in guest end
	// by itself after a duration, with a code.
	EnvGuestExitAfter = "KRUN_DOUBLE_GUEST_EXIT_AFTER"
	EnvGuestExitCode  = "KRUN_DOUBLE_GUEST_EXIT_CODE"
)

// EnvNames are every variable of the double's that a launcher must pass
// on.
func EnvNames() []string {
	return []string{EnvLog, EnvFail, EnvGuest, EnvExit, EnvGuestExitAfter, EnvGuestExitCode}
}

func sourceDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

// Build compiles the double with the system C compiler (cc) into
// dir/libkrun.so.1 and returns its path; each of omit is a symbol left out.
func Build(t testing.TB, dir string, omit ...string) string {
	t.Helper()
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Fatalf("the libkrun test double needs a C compiler: cc not found (apt-get install gcc): %v", err)
	}
	out := filepath.Join(dir, "libkrun.so.1")
	args := []string{"-Wall", "-Werror", "-shared", "-fPIC", "-o", out}
	for _, s := range omit {
		args = append(args, "-DOMIT_"+s)
	}
	args = append(args, filepath.Join(sourceDir(), "c", "libkrun_double.c"))
	if b, err := exec.Command(cc, args...).CombinedOutput(); err != nil {
		t.Fatalf("cc %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return out
}

// BuildGuest builds the stand-in guest into dir and returns its path.
func BuildGuest(t testing.TB, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "krun-double-guest")
	cmd := exec.Command("go", "build", "-o", out, "./guest")
	cmd.Dir = sourceDir()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build the stand-in guest: %v\n%s", err, b)
	}
	return out
}

// Call is one recorded call: "call" is its name, the other keys its
// arguments as the header names them.
type Call map[string]any

// Name is the call's name.
func (c Call) Name() string { s, _ := c["call"].(string); return s }

// ReadCalls reads the call log.
func ReadCalls(path string) ([]Call, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var calls []Call
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var c Call
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			return nil, fmt.Errorf("call log %s: %q: %w", path, sc.Text(), err)
		}
		calls = append(calls, c)
	}
	return calls, sc.Err()
}
