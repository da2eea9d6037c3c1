package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestNamedVolumeOutlivesBoxes: a named volume's data written by one box is
// read by the next one, and the volume's rules hold on real VMs: a second
// read-write attachment while the first box runs is refused, and so is rm
// of a volume in use.
func TestNamedVolumeOutlivesBoxes(t *testing.T) {
	e := newEnv(t)
	e.ok("volume", "create", "--size", "64MiB", "keep")
	e.ok("run", "--rm", "-v", "keep:/data", e.image, "--", "sh", "-c", "echo first > /data/note && sync")
	// A box with mounts boots cold and makes no boot template (its device set differs).
	if out := e.ok("image", "templates"); strings.Contains(out, strings.TrimPrefix(e.image, "oci-layout:")) {
		t.Errorf("a box with a volume made a boot template:\n%s", out)
	}

	e.ok("run", "-d", "--name", "reader", "-v", "keep:/srv/vol", e.image)
	if got := strings.TrimSpace(e.ok("exec", "reader", "--", "cat", "/srv/vol/note")); got != "first" {
		t.Fatalf("the second box reads %q from the volume, want %q", got, "first")
	}
	if _, errs, code := e.run(nil, "run", "--rm", "-v", "keep:/data", e.image, "--", "true"); code == 0 || !strings.Contains(errs, "attached to running box reader") {
		t.Errorf("a second read-write attachment while reader runs: exit %d %s", code, errs)
	}
	if _, errs, code := e.run(nil, "volume", "rm", "keep"); code == 0 || !strings.Contains(errs, "used by reader") {
		t.Errorf("volume rm while reader uses it: exit %d %s", code, errs)
	}
	// The box's own disk is not the volume: / and /srv/vol are different filesystems.
	df := e.ok("exec", "reader", "--", "sh", "-c", "grep ' /srv/vol ' /proc/mounts")
	if !strings.Contains(df, "/dev/vdc /srv/vol ext4 rw") {
		t.Errorf("/proc/mounts for the volume: %q", df)
	}
	e.ok("rm", "-f", "reader")
	e.ok("volume", "rm", "keep")
}

// TestHostDirectoryShares: a host directory shared read-write shows files
// both ways; shared read-only, writes fail in the guest and the host file is
// unchanged, even after the guest's root remounts it read-write; a symlink
// in the share pointing out of it resolves in the guest's tree, never to the
// host file it names. virtio-fs runs on the default guest (Debian's cloud
// kernel has virtio-fs, and the qemu plugin's share_transport = "auto"
// picks it where virtiofsd is installed); 9p needs a guest kernel with 9p,
// which the cloud kernel lacks: the 9p case looks for one in
// BOXCTL_E2E_9P_GUEST (guest/build.sh with KERNEL_PKG=linux-image-amd64
// OUT=build/guest-generic makes one), or build/guest-generic. One booted
// box per transport.
func TestHostDirectoryShares(t *testing.T) {
	t.Run("virtio-fs", func(t *testing.T) {
		e := newEnv(t)
		if _, err := os.Stat("/usr/lib/qemu/virtiofsd"); err != nil {
			t.Skipf("no virtiofsd (%v): install qemu-system-common", err)
		}
		testShares(t, e, "virtiofs")
	})
	t.Run("9p", func(t *testing.T) {
		e := newEnv(t)
		guest := os.Getenv("BOXCTL_E2E_9P_GUEST")
		if guest == "" {
			guest = filepath.Join(filepath.Dir(e.guest), "guest-generic")
		}
		env, err := os.ReadFile(filepath.Join(guest, "guest.env"))
		if err != nil || bytes.Contains(env, []byte("cloud-amd64")) {
			t.Skipf("no guest kernel with 9p in %s (%v): Debian's cloud kernel has no 9p; run `make guest-generic`", guest, err)
		}
		e.guest = guest
		writeQEMUConfig(t, e, `share_transport = "9p"`)
		testShares(t, e, "9p")
	})
}

// writeQEMUConfig gives e's boxctl a config with these settings in the
// qemu plugin's block (read from XDG_CONFIG_HOME, which is e.home).
func writeQEMUConfig(t *testing.T, e *env, settings string) {
	t.Helper()
	dir := filepath.Join(e.home, "boxctl")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(dir, "config.hcl"), "plugin \"qemu\" {\n  config {\n    "+settings+"\n  }\n}\n")
}

// testShares checks a box's shares whose guest filesystem is fstype.
func testShares(t *testing.T, e *env, fstype string) {
	// Not t.TempDir(), whose parent is 0700: a root boxctl serves the share
	// as an unprivileged user (QEMU, or virtiofsd in a user namespace),
	// which opens the shared directory itself.
	host, err := os.MkdirTemp("", "boxctl-share-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(host) })
	rw := filepath.Join(host, "rw")
	ro := filepath.Join(host, "ro")
	secret := filepath.Join(host, "secret")
	for _, d := range []string{rw, ro} {
		if err := os.Mkdir(d, 0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o777); err != nil { // the sandboxed user writes here
			t.Fatal(err)
		}
	}
	if err := os.Chmod(host, 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(rw, "from-host"), "hello guest\n")
	mustWrite(t, filepath.Join(ro, "keep"), "original\n")
	mustWrite(t, secret, "host secret\n")
	if err := os.Symlink(secret, filepath.Join(rw, "abs-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../secret", filepath.Join(rw, "rel-link")); err != nil {
		t.Fatal(err)
	}

	e.ok("run", "-d", "--name", "sh", "-v", rw+":/mnt/rw", "-v", ro+":/mnt/ro:ro", e.image)
	mounts := e.ok("exec", "sh", "--", "cat", "/proc/mounts")
	for _, m := range []string{" /mnt/rw " + fstype + " rw,", " /mnt/ro " + fstype + " ro,"} {
		if !strings.Contains(mounts, m) {
			t.Fatalf("the guest has no mount %q:\n%s", m, mounts)
		}
	}
	t.Run("rw", func(t *testing.T) {
		if got := e.ok("exec", "sh", "--", "cat", "/mnt/rw/from-host"); got != "hello guest\n" {
			t.Errorf("guest reads %q", got)
		}
		e.ok("exec", "sh", "--", "sh", "-c", "echo hello host > /mnt/rw/from-guest")
		if b, err := os.ReadFile(filepath.Join(rw, "from-guest")); err != nil || string(b) != "hello host\n" {
			t.Errorf("host reads %q, %v", b, err)
		}
		// What the host changes the guest sees at once.
		mustWrite(t, filepath.Join(rw, "from-host"), "changed on the host\n")
		if got := e.ok("exec", "sh", "--", "cat", "/mnt/rw/from-host"); got != "changed on the host\n" {
			t.Errorf("after a change on the host the guest reads %q", got)
		}
		// Ownership (docs/volumes.md): a file root writes in the guest belongs on the
		// host to the user the share is served as, never to root, unless boxctl runs
		// unconfined.
		if st, err := os.Stat(filepath.Join(rw, "from-guest")); err == nil {
			uid := st.Sys().(*syscall.Stat_t).Uid
			t.Logf("a file written by root in the guest has uid %d on the host", uid)
			if os.Geteuid() == 0 && uid == 0 {
				t.Error("a file written in the guest is owned by root on the host: the share's server was not confined")
			}
			if want := e.inspect("sh").SandboxUID; want != 0 && uid != want {
				t.Errorf("a file written in the guest is owned by %d on the host, want the sandbox user %d", uid, want)
			}
			// A chown in the guest does not give the host file away.
			_, _, _ = e.run(nil, "exec", "sh", "--", "chown", "1234:1234", "/mnt/rw/from-guest")
			if st2, err := os.Stat(filepath.Join(rw, "from-guest")); err != nil || st2.Sys().(*syscall.Stat_t).Uid != uid {
				t.Errorf("after a chown in the guest the host file is %+v, %v; want it still owned by %d", st2, err, uid)
			}
		}
	})
	t.Run("ro", func(t *testing.T) {
		_, _, code := e.run(nil, "exec", "sh", "--", "sh", "-c", "echo changed > /mnt/ro/keep")
		if code == 0 {
			t.Error("a write to the read-only share succeeded")
		}
		// Remounted read-write in the guest, the host side still refuses.
		mounts := e.ok("exec", "sh", "--", "sh", "-c", "mount -o remount,rw /mnt/ro; grep ' /mnt/ro ' /proc/mounts")
		if !strings.Contains(mounts, " "+fstype+" rw,") {
			t.Fatalf("the guest could not remount the share read-write (%q): the host-side check is not exercised", mounts)
		}
		for _, cmd := range []string{"echo changed > /mnt/ro/keep", "echo new > /mnt/ro/new", "rm /mnt/ro/keep", "chmod 777 /mnt/ro/keep", "mkdir /mnt/ro/d"} {
			out, errs, code := e.run(nil, "exec", "sh", "--", "sh", "-c", cmd)
			if code == 0 {
				t.Errorf("%s after a read-write remount in the guest succeeded", cmd)
			}
			t.Logf("%s on the read-only share after a rw remount: exit %d %s%s", cmd, code, out, errs)
		}
		if b, _ := os.ReadFile(filepath.Join(ro, "keep")); string(b) != "original\n" {
			t.Errorf("the host file now holds %q", b)
		}
		if st, err := os.Stat(filepath.Join(ro, "keep")); err != nil || st.Mode().Perm() != 0o644 {
			t.Errorf("the host file is now %v, %v; want mode 0644", st, err)
		}
		for _, n := range []string{"new", "d"} {
			if _, err := os.Stat(filepath.Join(ro, n)); err == nil {
				t.Errorf("%s appeared in the read-only share", n)
			}
		}
	})
	t.Run("symlinks", func(t *testing.T) {
		for _, l := range []string{"/mnt/rw/abs-link", "/mnt/rw/rel-link"} {
			out, _, _ := e.run(nil, "exec", "sh", "--", "cat", l)
			if strings.Contains(out, "host secret") {
				t.Errorf("reading %s in the guest reached the host file outside the share", l)
			}
		}
		// Writing through the link does not reach the host file either.
		_, _, _ = e.run(nil, "exec", "sh", "--", "sh", "-c", "echo pwned > /mnt/rw/abs-link; echo pwned > /mnt/rw/rel-link")
		if b, _ := os.ReadFile(secret); string(b) != "host secret\n" {
			t.Errorf("the host file outside the share now holds %q", b)
		}
		// Nor does a path with .. from the share's root.
		out, _, _ := e.run(nil, "exec", "sh", "--", "cat", "/mnt/rw/../secret")
		if strings.Contains(out, "host secret") {
			t.Error("/mnt/rw/../secret reached the host file")
		}
	})
	if fstype == "virtiofs" {
		t.Run("daemons end with the VM", func(t *testing.T) {
			if n := countProcs(t, rw); n == 0 {
				t.Fatalf("no virtiofsd serves %s", rw)
			}
			// kill -9 of the launcher (the box's VM process): its virtiofsd go with it.
			pid := e.inspect("sh").Run.VM.PID
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for countProcs(t, rw) > 0 && time.Now().Before(deadline) {
				time.Sleep(100 * time.Millisecond)
			}
			if n := countProcs(t, rw); n > 0 {
				t.Errorf("%d virtiofsd processes outlived the launcher killed with SIGKILL", n)
			}
			// A normal stop leaves none either.
			e.ok("start", "sh")
			if countProcs(t, rw) == 0 {
				t.Fatalf("no virtiofsd after the restart")
			}
			e.ok("stop", "sh")
			if n := countProcs(t, rw); n > 0 {
				t.Errorf("%d virtiofsd processes outlived the stop", n)
			}
		})
	}
	e.ok("rm", "-f", "sh")
}

// countProcs counts the processes whose command line names path.
func countProcs(t *testing.T, path string) int {
	t.Helper()
	out, _ := exec.Command("pgrep", "-c", "-f", "virtiofsd.*"+path).Output()
	n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return n
}

func mustWrite(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
