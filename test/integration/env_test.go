// Package integration tests the runtime, the box monitor and the CLI with
// real processes: the boxctl binary, real plugin processes over go-plugin,
// real bbolt files. The VMM is the procvmm test double (its "VM" is a host
// process), so these tests cover lifecycle, monitor and recovery paths
// without booting kernels; test/e2e boots real VMs.
package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/test/images/busybox"
	"github.com/boxctl/boxctl/test/testbin"
)

var bins testbin.Set

// testImage is the image boxes of these tests run: the busybox test image
// as an OCI layout, built once for the test binary. The procvmm VMM test
// double gets its real root disk and writable disk from the oci and qcow2
// plugins, as a real VMM would.
var testImage string

func TestMain(m *testing.M) {
	if os.Getenv(ownerEnv) != "" {
		os.Exit(runOwner())
	}
	dir, err := os.MkdirTemp("", "bximg")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if _, err := busybox.BuildLayout(filepath.Join(dir, "busybox"), busybox.Options{}); err != nil {
		fmt.Fprintf(os.Stderr, "build the busybox test image: %v\n", err)
		os.Exit(1)
	}
	testImage = "oci-layout:" + filepath.Join(dir, "busybox")
	code := m.Run()
	bins.Cleanup()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// env is one isolated boxctl installation: binaries, a home and a config
// selecting the procvmm test double. The image plugin is the real oci
// plugin (create asks it to check references).
type env struct {
	t      *testing.T
	bin    string
	home   string
	config string
}

func newEnv(t *testing.T, extraHCL string) *env {
	t.Helper()
	bin := bins.Dir(t, "boxctl", "boxctl-plugin-procvmm", "boxctl-plugin-badproto", "boxctl-plugin-oci", "boxctl-plugin-qcow2")
	home := testbin.ShortTempDir(t)
	cfg := testbin.WriteFile(t, home, "config.hcl", fmt.Sprintf("vmm = %q\n%s\n", "procvmm", extraHCL))
	e := &env{t: t, bin: bin, home: filepath.Join(home, "h"), config: cfg}
	t.Cleanup(e.killAll)
	return e
}

// killAll kills any monitor or VM a failed test left behind.
func (e *env) killAll() {
	_ = exec.Command("pkill", "-9", "-f", e.home).Run()
}

func (e *env) boxctlCmd(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(e.bin, "boxctl"), append([]string{"--home", e.home, "--config", e.config}, args...)...)
	cmd.Env = append(os.Environ(), "BOXCTL_LOG=")
	return cmd
}

// cli runs boxctl and returns stdout, stderr and the exit code.
func (e *env) cli(args ...string) (string, string, int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := e.boxctlCmd(ctx, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("run boxctl %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// ok runs boxctl and fails the test unless it exits 0; it returns stdout.
func (e *env) ok(args ...string) string {
	e.t.Helper()
	out, errs, code := e.cli(args...)
	if code != 0 {
		e.t.Fatalf("boxctl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

// runtime opens an in-process runtime on the env's home.
func (e *env) runtime(opts ...core.Option) *core.Runtime {
	e.t.Helper()
	cfg, err := config.LoadFile(e.config)
	if err != nil {
		e.t.Fatal(err)
	}
	base := []core.Option{
		core.WithConfig(cfg),
		core.WithHome(e.home),
		core.WithMonitorBinary(filepath.Join(e.bin, "boxctl")),
		core.WithPluginDirs(e.bin),
		core.WithLogger(hclog.NewNullLogger(), nil),
	}
	rt, err := core.Open(context.Background(), append(base, opts...)...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = rt.Close() })
	return rt
}

func (e *env) info(rt *core.Runtime, ref string) *model.Box {
	e.t.Helper()
	b, err := rt.GetInfo(context.Background(), ref)
	if err != nil {
		e.t.Fatalf("get %s: %v", ref, err)
	}
	return b
}

// waitStatus polls a fresh runtime until the box has the status.
func (e *env) waitStatus(ref string, want model.Status, within time.Duration) *model.Box {
	e.t.Helper()
	deadline := time.Now().Add(within)
	var last *model.Box
	for time.Now().Before(deadline) {
		rt := e.runtime()
		b, err := rt.GetInfo(context.Background(), ref)
		_ = rt.Close()
		if err == nil && b.Status == want {
			return b
		}
		last = b
		time.Sleep(100 * time.Millisecond)
	}
	e.t.Fatalf("box %s did not become %s within %s (last: %+v)", ref, want, within, last)
	return nil
}

func (e *env) boxDir(id string) string { return filepath.Join(e.home, "boxes", id) }

// templateDisks are the storage disks the home's boot templates own (a new
// box of an image starts from one: see core's templates).
func (e *env) templateDisks(rt *core.Runtime) map[string]bool {
	e.t.Helper()
	ts, err := rt.Templates(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]bool{}
	for _, t := range ts {
		out[t.DiskID] = true
	}
	return out
}

func (e *env) assertConsistent(rt *core.Runtime) {
	e.t.Helper()
	problems, err := rt.CheckConsistency(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	if len(problems) > 0 {
		e.t.Fatalf("home is inconsistent:\n  %s", strings.Join(problems, "\n  "))
	}
}

func pidAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] != 'Z'
}

func waitDead(t *testing.T, pid int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if !pidAlive(pid) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("process %d still alive after %s", pid, within)
}
