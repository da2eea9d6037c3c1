package qemuvmm

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestVirtiofsdConfinement starts a real virtiofsd for a read-only share
// as the launcher does (no QEMU: virtiofsd waits for its vhost-user
// connection) and looks at the process from the host: its user namespace
// maps only root, to the share's user; in its mount namespace the share is
// read-only; the host's mount namespace is untouched; and stop ends it.
func TestVirtiofsdConfinement(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the launcher maps the sandbox user into virtiofsd's user namespace")
	}
	bin := findVirtiofsd("")
	if bin == "" {
		t.Skip("no virtiofsd (Debian: qemu-system-common)")
	}
	checkVirtiofsd(t, "/nonexistent/boxctl-plugin-qemu", bin, 1879040000, 1879040000)
}

// asUserEnv makes TestVirtiofsdConfinementUnprivileged run its check: it
// is set when the test re-runs its binary as an unprivileged user.
const asUserEnv = "BOXCTL_TEST_VIRTIOFSD_AS_USER"

// TestVirtiofsdConfinementUnprivileged is that check for a launcher that
// runs as an ordinary user, which starts virtiofsd through the
// virtiofsd-exec subcommand (this test binary's TestMain serves it): the
// test binary runs itself as nobody.
func TestVirtiofsdConfinementUnprivileged(t *testing.T) {
	bin := findVirtiofsd("")
	if bin == "" {
		t.Skip("no virtiofsd (Debian: qemu-system-common)")
	}
	if os.Getenv(asUserEnv) == "1" {
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		checkVirtiofsd(t, exe, bin, uint32(os.Geteuid()), uint32(os.Getegid()))
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the check as another, unprivileged user")
	}
	if b, err := os.ReadFile("/proc/sys/kernel/unprivileged_userns_clone"); err == nil && strings.TrimSpace(string(b)) == "0" {
		t.Skip("this host allows user namespaces only to root")
	}
	// A copy of the test binary that nobody can run (go test's is in a 0700
	// directory).
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := shortDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	copyExe := filepath.Join(dir, "qemuvmm.test")
	if err := os.WriteFile(copyExe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	const nobody = 65534
	cmd := exec.Command(copyExe, "-test.run", "^TestVirtiofsdConfinementUnprivileged$", "-test.v")
	cmd.Env = []string{asUserEnv + "=1", "PATH=" + os.Getenv("PATH"), "TMPDIR=/tmp"}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestVirtiofsdConfinementUnprivileged")) {
		t.Fatalf("the check as uid %d: %v\n%s", nobody, err, out)
	}
}

// checkVirtiofsd starts virtiofsd (bin) for a read-only share as the
// launcher does, through exe's virtiofsd-exec when unprivileged, with uid
// and gid as the share's user, and checks the process from outside.
func checkVirtiofsd(t *testing.T, exe, bin string, uid, gid uint32) {
	dir := shortDir(t)
	// A comma and a backslash, which virtiofsd's option list must not split at.
	share := filepath.Join(dir, `sh,a\re`)
	if err := os.Mkdir(share, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil { // the share's user reaches it
		t.Fatal(err)
	}
	// A process in this test's mount namespace as it was before virtiofsd:
	// the launcher's thread that made the private one may be any of this
	// process's, the main one included, so /proc/self is no witness.
	witness := exec.Command("sleep", "60")
	if err := witness.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = witness.Process.Kill(); _ = witness.Wait() }()
	var log syncBuffer
	stop, err := startVirtiofsd(exe, virtiofsDaemon{Binary: bin, Source: share, ReadOnly: true, Socket: filepath.Join(dir, "vfs.sock"), UID: uid, GID: gid}, nil, true, &log)
	if err != nil {
		t.Fatal(err)
	}
	pid := 0
	for deadline := time.Now().Add(10 * time.Second); pid == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		pid = processWithArg(t, bin, "source="+fuseOptEscape(share))
	}
	if pid == 0 {
		stop()
		t.Fatalf("no virtiofsd for %s; its output: %s", share, log.String())
	}
	uidMap, _ := os.ReadFile(fmt.Sprintf("/proc/%d/uid_map", pid))
	if f := strings.Fields(string(uidMap)); len(f) != 3 || f[0] != "0" || f[1] != fmt.Sprint(uid) || f[2] != "1" {
		t.Errorf("virtiofsd's uid_map is %q, want only 0 -> %d", uidMap, uid)
	}
	if opts, ok := mountOptions(t, pid, share); !ok || !hasOpt(opts, "ro") {
		t.Errorf("in virtiofsd's mount namespace the share is %q (found %v), want a read-only mount", opts, ok)
	}
	if opts, ok := mountOptions(t, witness.Process.Pid, share); ok {
		t.Errorf("the host's mount namespace has a mount at the share (%s): the launcher's mounts leaked", opts)
	}
	if status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); !bytes.Contains(status, []byte("NoNewPrivs:\t1")) {
		t.Errorf("virtiofsd runs without no-new-privileges:\n%s", status)
	}
	if st, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		if s := st.Sys().(*syscall.Stat_t); s.Uid != uid {
			t.Errorf("virtiofsd runs as host uid %d, want %d", s.Uid, uid)
		}
	}
	stop()
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); !bytes.Contains(b, []byte(") Z ")) {
			t.Errorf("virtiofsd %d still runs after stop", pid)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "vfs.sock")); err == nil {
		t.Error("stop left the vhost-user socket")
	}
}

// processWithArg returns a process whose command line has arg, 0 if none.
func processWithArg(t *testing.T, bin, arg string) int {
	t.Helper()
	// Unprivileged, the launcher's virtiofsd-exec (with the same arguments)
	// sets up the namespaces before it becomes virtiofsd: only the process
	// running bin is the daemon.
	want, err := filepath.EvalSymlinks(bin)
	if err != nil {
		t.Fatal(err)
	}
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, d := range dirs {
		if exe, err := os.Readlink(filepath.Join(filepath.Dir(d), "exe")); err != nil || exe != want {
			continue
		}
		b, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		for _, a := range bytes.Split(b, []byte{0}) {
			if string(a) == arg {
				var pid int
				fmt.Sscanf(filepath.Base(filepath.Dir(d)), "%d", &pid)
				return pid
			}
		}
	}
	return 0
}

// mountOptions returns the per-mount options of the top mount at path in
// pid's mount namespace.
func mountOptions(t *testing.T, pid int, path string) (string, bool) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	opts, found := "", false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		// mountinfo writes space, tab, newline and backslash as octal escapes.
		if len(f) > 5 && strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(f[4]) == path {
			opts, found = f[5], true
		}
	}
	return opts, found
}

func hasOpt(opts, o string) bool {
	for _, x := range strings.Split(opts, ",") {
		if x == o {
			return true
		}
	}
	return false
}
