package e2e

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/boxctl/boxctl/test/dockerregistry"
)

// TestCommitAndPush commits a running box (a new file, a deleted file and a
// deleted directory of the image), runs the new image, commits the box again
// once stopped, pushes to a real registry on loopback and pulls the image
// back into a fresh home.
func TestCommitAndPush(t *testing.T) {
	e := newEnv(t)
	reg := dockerregistry.Start(t)
	ref := reg.Ref("e2e/committed:v1")
	e.ok("run", "-d", "--name", "src", "-e", "FROM_BOX=yes", e.image)
	e.ok("exec", "src", "--", "sh", "-c", "echo committed > /root/new.txt && rm /etc/group && rmdir /var")

	out := e.ok("commit", "-m", "e2e commit", "-a", "tester", "src", ref)
	if !strings.Contains(out, "Committed src as "+ref) {
		t.Fatalf("commit printed %q", out)
	}
	m := regexp.MustCompile(`\((sha256:[0-9a-f]{64})\)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("commit printed no digest: %q", out)
	}
	digest := m[1]
	if !strings.Contains(e.ok("images"), ref) {
		t.Fatalf("the committed image is not listed:\n%s", e.ok("images"))
	}
	// The box runs on, thawed: it can write.
	if got := e.ok("exec", "src", "--", "sh", "-c", "echo after > /root/after.txt && cat /root/after.txt"); got != "after\n" {
		t.Fatalf("write in the box after the commit: %q", got)
	}
	if st := e.inspect("src").Status; st != "running" {
		t.Fatalf("the source box is %s after the commit, want running", st)
	}

	check := `cat /root/new.txt
test -e /etc/group && echo group-present || echo group-deleted
test -e /var && echo var-present || echo var-deleted
test -e /root/after.txt && echo after-present || echo after-absent
echo "env $FROM_BOX"`
	got := e.ok("run", "--rm", "--name", "fromimage", ref, "--", "sh", "-c", check)
	if want := "committed\ngroup-deleted\nvar-deleted\nafter-absent\nenv yes\n"; got != want {
		t.Fatalf("a box of the committed image sees:\n%s\nwant:\n%s", got, want)
	}

	// A stopped box is booted for the commit and stopped again.
	e.ok("stop", "src")
	_, errs, code := e.run(nil, "commit", "src", "e2e/stopped:v1")
	if code != 0 || !strings.Contains(errs, "booting it") {
		t.Fatalf("commit of a stopped box: exit %d\n%s%s", code, errs, e.consoleTail())
	}
	if st := e.inspect("src").Status; st != "stopped" {
		t.Errorf("the box is %s after the commit of it stopped, want stopped again", st)
	}
	if got := e.ok("run", "--rm", "e2e/stopped:v1", "--", "cat", "/root/new.txt", "/root/after.txt"); got != "committed\nafter\n" {
		t.Errorf("the image of the stopped box has %q", got)
	}

	out = e.ok("push", ref)
	if !strings.Contains(out, "Pushed "+ref) {
		t.Fatalf("push printed %q", out)
	}
	other := newEnv(t)
	pulled := strings.TrimSpace(other.ok("pull", "-q", ref))
	if pulled != digest {
		t.Errorf("pulled %s back; the committed image is %s", pulled, digest)
	}
	if got := other.ok("run", "--rm", ref, "--", "sh", "-c", "cat /root/new.txt; test -e /etc/group || echo group-deleted"); got != "committed\ngroup-deleted\n" {
		t.Errorf("a box of the pulled image in another home sees %q", got)
	}
}

// TestCommitKilledWhileTheBoxIsFrozen kills boxctl -9 in the middle of a
// commit's diff, while the guest is frozen: the guest thaws by itself when
// the freeze lease ends, the box runs on, and the next commit works and
// sweeps the dead commit's temporary file.
func TestCommitKilledWhileTheBoxIsFrozen(t *testing.T) {
	e := newEnv(t)
	e.ok("run", "-d", "--name", "big", e.image)
	// Enough data that the diff takes a while to stream.
	e.ok("exec", "big", "--", "sh", "-c", "dd if=/dev/urandom of=/root/big bs=1M count=160 2>/dev/null")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := e.command(ctx, "commit", "big", "e2e/killed:v1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(e.home, "tmp")
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if n := commitBytes(tmp); n > 1<<20 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("the commit never started writing its diff under %s", tmp)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	killed := time.Now()

	// A write blocks while the guest is frozen and goes through once its
	// lease (10s) ends.
	got := e.ok("exec", "big", "--", "sh", "-c", "echo thawed > /root/after-kill && cat /root/after-kill")
	if got != "thawed\n" {
		t.Fatalf("write after the killed commit: %q", got)
	}
	t.Logf("the guest accepted a write %s after boxctl was killed", time.Since(killed).Round(time.Millisecond))
	if !strings.Contains(e.ok("ls", "-a"), "big") || e.inspect("big").Status != "running" {
		t.Fatalf("after the killed commit: %s", e.ok("ls", "-a"))
	}
	// The dead commit's file is swept: by the next command's recovery
	// (its process is gone), or by the next commit once a minute old.
	old := time.Now().Add(-2 * time.Minute)
	files, _ := filepath.Glob(filepath.Join(tmp, "commit-*.tar"))
	for _, f := range files {
		os.Chtimes(f, old, old)
	}
	e.ok("exec", "big", "--", "rm", "/root/big")
	e.ok("commit", "big", "e2e/after-kill:v1")
	if left, _ := filepath.Glob(filepath.Join(tmp, "commit-*.tar")); len(left) != 0 {
		t.Errorf("temporary files left after the next commit: %v", left)
	}
	if got := e.ok("run", "--rm", "e2e/after-kill:v1", "--", "cat", "/root/after-kill"); got != "thawed\n" {
		t.Errorf("the next commit's image has %q", got)
	}
}

func commitBytes(dir string) int64 {
	files, _ := filepath.Glob(filepath.Join(dir, "commit-*.tar"))
	var n int64
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil {
			n += fi.Size()
		}
	}
	return n
}
