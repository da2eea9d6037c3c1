// Package containerd tests boxctl's containerd shim against real
// containerd daemons the test starts, each with its own root, state and
// sockets under a temporary directory: containerd 1.6 (Debian bookworm's
// package, which `make test` installs through scripts/install-deps.sh) and
// containerd 2.1 (Debian sid's package, unpacked into build/containerd-sid
// by scripts/fetch-containerd-sid.sh). The containers are real boxes:
// QEMU VMs booting build/guest.
package containerd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	taskv3 "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/ttrpc"
	"github.com/creack/pty"

	"github.com/boxctl/boxctl/test/images/busybox"
	"github.com/boxctl/boxctl/test/testbin"
)

var bins testbin.Set

func TestMain(m *testing.M) {
	code := m.Run()
	bins.Cleanup()
	os.Exit(code)
}

const (
	runtimeType = "io.containerd.boxctl.v2"
	imageRef    = "docker.io/library/busybox:latest"
)

// daemon is one containerd with boxctl's shim on its PATH.
type daemon struct {
	t       *testing.T
	dir     string
	ctrBin  string
	sock    string
	home    string
	bin     string
	log     string
	guest   string
	cmd     *exec.Cmd
	stopped bool
}

// TestContainerd16 runs the shim under Debian bookworm's containerd 1.6,
// which speaks task API v2 and reads the plain-address start answer.
func TestContainerd16(t *testing.T) {
	for _, b := range []string{"/usr/bin/containerd", "/usr/bin/ctr"} {
		if _, err := os.Stat(b); err != nil {
			t.Fatalf("%s missing: install Debian's containerd package (scripts/install-deps.sh does; make test runs it)", b)
		}
	}
	d := startDaemon(t, "/usr/bin")
	checkShim(t, d, "1.6.")
}

// TestContainerd21 runs the shim under containerd 2.1 from Debian sid.
func TestContainerd21(t *testing.T) {
	dir := filepath.Join(testbin.ModuleRoot(t), "build", "containerd-sid")
	if why, err := os.ReadFile(filepath.Join(dir, "UNAVAILABLE")); err == nil {
		t.Skipf("containerd 2.1 from Debian sid could not be fetched: %s", bytes.TrimSpace(why))
	}
	bin := filepath.Join(dir, "usr", "bin")
	if _, err := os.Stat(filepath.Join(bin, "containerd")); err != nil {
		t.Fatalf("%s/containerd missing: run scripts/fetch-containerd-sid.sh (make test does)", bin)
	}
	d := startDaemon(t, bin)
	checkShim(t, d, "2.1.")
}

// checkShim runs every check on one daemon, booting one box per container.
func checkShim(t *testing.T, d *daemon, wantVersion string) {
	if out := d.ok("version"); !strings.Contains(out, "Version:  "+wantVersion) && !strings.Contains(out, "Version: "+wantVersion) {
		t.Fatalf("ctr version: want server %s*, got\n%s", wantVersion, out)
	}
	d.importImage()

	t.Run("RunPrintsGuestKernel", func(t *testing.T) {
		// The OCI spec's memory and CPU limits size the VM.
		// ctr 2.x sets the spec's hostname (1.6's ctr cannot; the CRI test
		// covers it there).
		args := []string{"run", "--runtime", runtimeType, "--rm", "--memory-limit", strconv.Itoa(384 << 20), "--cpus", "2"}
		wantHost := ""
		if !strings.HasPrefix(wantVersion, "1.") {
			wantHost = "web-1"
			args = append(args, "--hostname", wantHost)
		}
		// A bind mount of a host directory is a host directory share
		// (virtio-fs on the default guest); read-only on the host side.
		shared := t.TempDir()
		// The confined QEMU's user serves the share: it must reach it.
		for _, dir := range []string{filepath.Dir(shared), shared} {
			if err := os.Chmod(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(shared, "hello"), []byte("from the host\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--mount", "type=bind,src="+shared+",dst=/data,options=rbind:ro")
		out, errs, code := d.ctr(nil, append(args, imageRef, "uname", "sh", "-c",
			"uname -a; nproc; grep MemTotal /proc/meminfo; hostname; cat /data/hello; touch /data/new 2>/dev/null && echo wrote || echo refused")...)
		if code != 0 {
			t.Fatalf("ctr run uname -a: exit %d\n%s%s", code, errs, d.logTail())
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 6 {
			t.Fatalf("ctr run printed %q: want uname, nproc, MemTotal, hostname and the shared directory's lines", out)
		}
		if lines[4] != "from the host" || lines[5] != "refused" {
			t.Errorf("a read-only bind of a host directory: read %q, write %q", lines[4], lines[5])
		}
		if _, err := os.Stat(filepath.Join(shared, "new")); err == nil {
			t.Error("a write into a read-only bind mount reached the host")
		}
		if wantHost != "" && lines[3] != wantHost {
			t.Errorf("hostname in a --hostname %s container: %q", wantHost, lines[3])
		}
		host, _ := exec.Command("uname", "-r").Output()
		guest := guestKernelRelease(t, d.guest)
		if !strings.Contains(lines[0], guest) || strings.Contains(lines[0], strings.TrimSpace(string(host))) {
			t.Fatalf("uname -a printed %q: want the guest kernel %s, not the host's %s", lines[0], guest, host)
		}
		if lines[1] != "2" {
			t.Errorf("nproc in a --cpus 2 container: %q", lines[1])
		}
		var kb int
		if _, err := fmt.Sscanf(lines[2], "MemTotal: %d kB", &kb); err != nil || kb > 384<<10 || kb < 256<<10 {
			t.Errorf("%q in a 384 MiB container: want a VM of 384 MiB", lines[2])
		}
		d.checkNothingLeft(t)
	})

	t.Run("TTYAndExitCode", func(t *testing.T) {
		out, code := d.ctrTTY("run", "-t", "--runtime", runtimeType, "--rm", imageRef, "tty1", "sh", "-c", "tty; exit 7")
		if code != 7 || !strings.Contains(out, "/dev/pts/") {
			t.Fatalf("ctr run -t sh -c 'tty; exit 7': exit %d, output %q: want 7 and a /dev/pts terminal%s", code, out, d.logTail())
		}
		d.checkNothingLeft(t)
	})

	t.Run("ExecAndSIGTERM", func(t *testing.T) {
		d.ok("run", "-d", "--runtime", runtimeType, imageRef, "long", "sleep", "1000")
		t.Cleanup(func() { d.remove("long") })
		if out := d.ok("task", "ls"); !strings.Contains(out, "RUNNING") {
			t.Fatalf("task ls after run -d: %s", out)
		}
		if ls := d.boxctl("ls", "--format", "{{.Name}} {{index .Config.Labels \"containerd.namespace\"}} {{index .Config.Labels \"containerd.id\"}}"); !strings.Contains(ls, "default.long default long") {
			t.Fatalf("boxctl ls: want the box labelled with namespace and ID, got %q", ls)
		}
		d.checkBothTaskAPIs(t, "long")
		out, errs, code := d.ctr(nil, "task", "exec", "--exec-id", "e1", "long", "sh", "-c", "echo out; echo err >&2; exit 3")
		if code != 3 || out != "out\n" || !strings.Contains(errs, "err") {
			t.Fatalf("task exec: exit %d stdout %q stderr %q: want 3, out, err", code, out, errs)
		}
		out, errs, code = d.ctr([]byte("through stdin\n"), "task", "exec", "--exec-id", "e2", "long", "cat")
		if code != 0 || out != "through stdin\n" {
			t.Fatalf("task exec cat (stdin): exit %d stdout %q stderr %q", code, out, errs)
		}
		d.ok("task", "pause", "long")
		if out := d.ok("task", "ls"); !strings.Contains(out, "PAUSED") {
			t.Errorf("task ls after pause: %s", out)
		}
		d.ok("task", "resume", "long")
		if out := d.ok("task", "exec", "--exec-id", "e3", "long", "echo", "resumed"); out != "resumed\n" {
			t.Errorf("exec after resume: %q", out)
		}
		if out := d.ok("task", "metrics", "long"); !strings.Contains(out, "memory.usage_in_bytes") && !strings.Contains(out, "memory.usage") {
			t.Errorf("task metrics: %s", out)
		}
		d.ok("task", "kill", "-s", "SIGTERM", "long")
		d.waitStopped(t, "long")
		_, errs, _ = d.ctr(nil, "task", "delete", "long")
		if !strings.Contains(errs, "143") {
			t.Errorf("task delete after SIGTERM: want exit code 143 reported, got %q", errs)
		}
		d.ok("container", "rm", "long")
		d.checkNothingLeft(t)
	})

	t.Run("SIGKILL", func(t *testing.T) {
		d.ok("run", "-d", "--runtime", runtimeType, imageRef, "killme", "sleep", "1000")
		t.Cleanup(func() { d.remove("killme") })
		d.ok("task", "kill", "-s", "SIGKILL", "killme")
		d.waitStopped(t, "killme")
		// A finished process is "not found" to containerd (its kill-then-
		// delete paths rely on the gRPC code), not an unknown error.
		if _, errs, code := d.ctr(nil, "task", "kill", "killme"); code == 0 || !strings.Contains(errs, "not found") || strings.Contains(errs, "unknown") {
			t.Errorf("kill of a finished task: exit %d, %q: want a not-found error", code, errs)
		}
		_, errs, _ := d.ctr(nil, "task", "delete", "killme")
		if !strings.Contains(errs, "137") {
			t.Errorf("task delete after SIGKILL: want exit code 137 reported, got %q", errs)
		}
		d.ok("container", "rm", "killme")
		d.checkNothingLeft(t)
	})

	t.Run("KilledShimLeavesNothing", func(t *testing.T) {
		d.ok("run", "-d", "--runtime", runtimeType, imageRef, "orphan", "sleep", "1000")
		t.Cleanup(func() { d.remove("orphan") })
		pid := shimPID(t, "orphan", d.sock)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill shim %d: %v", pid, err)
		}
		// containerd sees the shim go, runs `shim delete` (a new shim
		// process), which finds the box by its labels and removes it.
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) && strings.TrimSpace(d.boxctl("ls", "-a", "-q")) != "" {
			time.Sleep(500 * time.Millisecond)
		}
		d.checkNothingLeft(t)
		d.ok("container", "rm", "orphan")
	})
}

func startDaemon(t *testing.T, ctrdBin string) *daemon {
	t.Helper()
	return startDaemonWith(t, ctrdBin, true, func(string) string {
		return `disabled_plugins = ["io.containerd.grpc.v1.cri"]`
	})
}

// startDaemonWith starts containerd with extra config (given the daemon's
// directory) after its root, state and sockets. With envHome, containerd's
// environment names the boxctl home (BOXCTL_HOME); without, the runtime's
// options must (the CRI test).
func startDaemonWith(t *testing.T, ctrdBin string, envHome bool, extra func(dir string) string) *daemon {
	t.Helper()
	root := testbin.ModuleRoot(t)
	guest := filepath.Join(root, "build", "guest")
	if _, err := os.Stat(filepath.Join(guest, "vmlinuz")); err != nil {
		t.Fatalf("guest missing (%v): run `make guest` (make test does)", err)
	}
	bin := bins.Dir(t, "boxctl", "boxctl-plugin-qemu", "boxctl-plugin-qcow2", "boxctl-plugin-oci", "containerd-shim-boxctl-v2")
	dir := testbin.ShortTempDir(t)
	d := &daemon{
		t: t, dir: dir, ctrBin: filepath.Join(ctrdBin, "ctr"), sock: filepath.Join(dir, "c.sock"),
		home: filepath.Join(dir, "h"), bin: bin, log: filepath.Join(dir, "containerd.log"), guest: guest,
	}
	cfg := testbin.WriteFile(t, dir, "config.toml", fmt.Sprintf(`
version = 2
root = %q
state = %q
%s
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), extra(dir), d.sock, d.sock+".ttrpc"))
	logf, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(filepath.Join(ctrdBin, "containerd"), "--config", cfg)
	// The shim inherits containerd's environment: it finds itself on
	// PATH, and boxctl's home and guest from there.
	d.cmd.Env = append(filterEnv(os.Environ(), "BOXCTL_HOME"),
		"PATH="+bin+":"+os.Getenv("PATH"),
		"BOXCTL_GUEST_DIR="+guest, "XDG_CONFIG_HOME="+d.home, "BOXCTL_CONFIG=", "BOXCTL_LOG=")
	if envHome {
		d.cmd.Env = append(d.cmd.Env, "BOXCTL_HOME="+d.home)
	}
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	t.Cleanup(func() { d.stop(); logf.Close() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, _, code := d.ctr(nil, "version"); code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not answer on %s%s", d.sock, d.logTail())
		}
		time.Sleep(200 * time.Millisecond)
	}
	return d
}

// stop ends containerd, removes what a failed test left and then kills
// whatever is still running from this daemon's directory.
func (d *daemon) stop() {
	if d.stopped {
		return
	}
	d.stopped = true
	out, _, _ := d.ctr(nil, "task", "ls", "-q")
	for _, id := range strings.Fields(out) {
		d.ctr(nil, "task", "kill", "-s", "SIGKILL", id)
		d.ctr(nil, "task", "delete", "-f", id)
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = d.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = d.cmd.Process.Kill()
		<-done
	}
	cmd := exec.Command(filepath.Join(d.bin, "boxctl"), "--home", d.home, "rm", "-a", "-f")
	cmd.Env = d.cmd.Env
	_ = cmd.Run()
	_ = exec.Command("pkill", "-9", "-f", d.dir).Run()
	// Mounts a failed check left (rootfs, a CRI sandbox's shm), deepest first.
	mounts, _ := os.ReadFile("/proc/self/mounts")
	var points []string
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], d.dir+"/") {
			points = append(points, f[1])
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		_ = syscall.Unmount(points[i], syscall.MNT_DETACH)
	}
}

// remove kills and deletes a container a failed check left behind.
func (d *daemon) remove(id string) {
	d.ctr(nil, "task", "kill", "-s", "SIGKILL", id)
	d.ctr(nil, "task", "delete", "-f", id)
	d.ctr(nil, "container", "rm", id)
}

func filterEnv(env []string, drop string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, drop+"=") {
			out = append(out, kv)
		}
	}
	return out
}

func (d *daemon) ctr(stdin []byte, args ...string) (string, string, int) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.ctrBin, append([]string{"--address", d.sock}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), errb.String(), ee.ExitCode()
	}
	if err != nil {
		d.t.Fatalf("ctr %v: %v", args, err)
	}
	return out.String(), errb.String(), 0
}

func (d *daemon) ok(args ...string) string {
	d.t.Helper()
	out, errs, code := d.ctr(nil, args...)
	if code != 0 {
		d.t.Fatalf("ctr %s: exit %d\nstdout: %s\nstderr: %s%s", strings.Join(args, " "), code, out, errs, d.logTail())
	}
	return out
}

// ctrTTY runs ctr on a pseudo-terminal and returns what it printed.
func (d *daemon) ctrTTY(args ...string) (string, int) {
	d.t.Helper()
	cmd := exec.Command(d.ctrBin, append([]string{"--address", d.sock}, args...)...)
	f, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 40, Cols: 100})
	if err != nil {
		d.t.Fatalf("ctr on a pty: %v", err)
	}
	defer f.Close()
	var out bytes.Buffer
	copied := make(chan struct{})
	go func() { _, _ = io.Copy(&out, f); close(copied) }()
	timer := time.AfterFunc(3*time.Minute, func() { _ = cmd.Process.Kill() })
	defer timer.Stop()
	err = cmd.Wait()
	f.Close()
	<-copied
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		d.t.Fatalf("ctr %v: %v", args, err)
	}
	return out.String(), code
}

func (d *daemon) boxctl(args ...string) string {
	d.t.Helper()
	cmd := exec.Command(filepath.Join(d.bin, "boxctl"), append([]string{"--home", d.home}, args...)...)
	cmd.Env = d.cmd.Env
	out, err := cmd.CombinedOutput()
	if err != nil {
		d.t.Fatalf("boxctl %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// importImage imports the busybox test image as an OCI archive.
func (d *daemon) importImage(ctrArgs ...string) {
	d.t.Helper()
	d.importBusybox("latest", nil, ctrArgs...)
}

// importBusybox imports the busybox test image as docker.io/library/busybox:TAG.
func (d *daemon) importBusybox(tag string, cfg *busybox.Config, ctrArgs ...string) {
	d.t.Helper()
	layout := filepath.Join(d.dir, "img-"+tag)
	if _, err := busybox.BuildLayout(layout, busybox.Options{Tag: tag, Config: cfg}); err != nil {
		d.t.Fatalf("build the busybox image: %v", err)
	}
	archive := layout + ".tar"
	if out, err := exec.Command("tar", "-C", layout, "-cf", archive, ".").CombinedOutput(); err != nil {
		d.t.Fatalf("tar the image: %v\n%s", err, out)
	}
	d.ok(append(ctrArgs, "images", "import", "--base-name", "docker.io/library/busybox", archive)...)
	if out := d.ok(append(ctrArgs, "images", "ls", "-q")...); !strings.Contains(out, "docker.io/library/busybox:"+tag) {
		d.t.Fatalf("image not imported: %q", out)
	}
}

// checkBothTaskAPIs asks the container's shim for its state over task
// API v2 and v3 on its one socket: containerd 1.6-2.2 use v2, 2.3+ v3.
func (d *daemon) checkBothTaskAPIs(t *testing.T, id string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(d.dir, "state", "io.containerd.runtime.v2.task", "default", id, "address"))
	if err != nil {
		t.Fatalf("shim address of %s: %v", id, err)
	}
	conn, err := net.Dial("unix", strings.TrimPrefix(strings.TrimSpace(string(data)), "unix://"))
	if err != nil {
		t.Fatalf("dial shim: %v", err)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v3, err := taskv3.NewTTRPCTaskClient(client).State(ctx, &taskv3.StateRequest{ID: id})
	if err != nil {
		t.Fatalf("task v3 State: %v", err)
	}
	v2, err := taskv2.NewTTRPCTaskClient(client).State(ctx, &taskv2.StateRequest{ID: id})
	if err != nil {
		t.Fatalf("task v2 State: %v", err)
	}
	if v3.Status != task.Status_RUNNING || v2.Status != task.Status_RUNNING || v3.Pid == 0 || v3.Pid != v2.Pid {
		t.Fatalf("State over v3 %v, over v2 %v: want both RUNNING with one pid", v3, v2)
	}
}

func (d *daemon) waitStopped(t *testing.T, id string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out := d.ok("task", "ls")
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[0] == id && f[2] == "STOPPED" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s did not stop: %s", id, out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// checkNothingLeft: no box, no box directory, no cached rootfs image, no
// hypervisor or shim of this daemon, no rootfs mount.
func (d *daemon) checkNothingLeft(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var problems []string
	for {
		problems = nil
		if ls := strings.TrimSpace(d.boxctl("ls", "-a", "-q")); ls != "" {
			problems = append(problems, "boxes: "+ls)
		}
		if entries, _ := os.ReadDir(filepath.Join(d.home, "boxes")); len(entries) > 0 {
			problems = append(problems, fmt.Sprintf("%d box directories", len(entries)))
		}
		if imgs := strings.TrimSpace(d.boxctl("images", "-q")); imgs != "" {
			problems = append(problems, "images: "+imgs)
		}
		if procs := processesMentioning(d.dir); len(procs) > 0 {
			problems = append(problems, "processes: "+strings.Join(procs, "; "))
		}
		if mounts, _ := os.ReadFile("/proc/self/mounts"); bytes.Contains(mounts, []byte(filepath.Join(d.dir, "state"))) {
			problems = append(problems, "a rootfs is still mounted under "+d.dir)
		}
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if len(problems) > 0 {
		t.Fatalf("left behind: %s%s", strings.Join(problems, ", "), d.logTail())
	}
}

// processesMentioning lists processes (other than containerd and its
// ctr clients) whose command line mentions s.
func processesMentioning(s string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, []byte(s)) {
			continue
		}
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if base := filepath.Base(args[0]); base == "containerd" || base == "ctr" {
			continue
		}
		out = append(out, strings.Join(args, " "))
	}
	return out
}

// shimPID finds the shim server of container id (started with -id ID and
// -address of this daemon).
func shimPID(t *testing.T, id, sock string) int {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(string(cmdline), "\x00")
		if filepath.Base(args[0]) == "containerd-shim-boxctl-v2" && hasPair(args, "-id", id) && hasPair(args, "-address", sock) {
			return pid
		}
	}
	t.Fatalf("no shim process for %s", id)
	return 0
}

func hasPair(args []string, k, v string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == k && args[i+1] == v {
			return true
		}
	}
	return false
}

func guestKernelRelease(t *testing.T, guest string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(guest, "guest.env"))
	if err != nil {
		t.Fatalf("read guest.env: %v", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "KERNEL_RELEASE="); ok {
			return strings.Trim(v, `"`)
		}
	}
	t.Fatalf("no KERNEL_RELEASE in %s/guest.env", guest)
	return ""
}

func (d *daemon) logTail() string {
	data, _ := os.ReadFile(d.log)
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return "\n--- containerd log ---\n" + string(data)
}
