package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/boxctl/boxctl/test/images/busybox"
	"github.com/boxctl/boxctl/test/testbin"
)

// TestImageDefaultCommand is defect 2 of issue 8: without a command, run
// executes the image's entrypoint and cmd, as the image's user, in its
// working directory, with its environment; --entrypoint drops the image's
// cmd unless a command is given, as in Docker.
func TestImageDefaultCommand(t *testing.T) {
	e := newEnv(t)
	layout := filepath.Join(testbin.ShortTempDir(t), "img")
	_, err := busybox.BuildLayout(layout, busybox.Options{Config: &busybox.Config{
		// "$*" shows the cmd (or the command given) the entrypoint was handed.
		Entrypoint: []string{"/bin/sh", "-c", `echo "args:$*"; id -un; pwd; echo "$GREETING"`, "sh"},
		Cmd:        []string{"from-cmd"},
		User:       busybox.GuestUser,
		WorkingDir: "/srv/app",
		Env:        []string{"GREETING=from-image"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	img := "oci-layout:" + layout
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"entrypoint and cmd", []string{img}, "args:from-cmd\nguest\n/srv/app\nfrom-image\n"},
		{"a command replaces the cmd", []string{img, "--", "x", "y"}, "args:x y\nguest\n/srv/app\nfrom-image\n"},
		{"--entrypoint drops the cmd", []string{"--entrypoint", "/bin/echo", img}, "\n"},
		{"--entrypoint with a command", []string{"--entrypoint", "/bin/echo", img, "--", "a", "b"}, "a b\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, errs, code := e.run(nil, append([]string{"run", "--rm"}, c.args...)...)
			if code != 0 || out != c.want {
				t.Fatalf("run %v: exit %d\nstdout %q, want %q\nstderr %s%s", c.args, code, out, c.want, errs, e.consoleTail())
			}
		})
	}
	t.Run("run -d runs the default command", func(t *testing.T) {
		e.ok("run", "-d", "--name", "dflt", img)
		deadline := time.Now().Add(60 * time.Second)
		for {
			logs := e.ok("logs", "dflt")
			if strings.Contains(logs, "args:from-cmd") && strings.Contains(logs, "/srv/app") && strings.Contains(logs, "from-image") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the default command's output never reached the console log:\n%s", logs)
			}
			time.Sleep(300 * time.Millisecond)
		}
		e.ok("rm", "-f", "dflt")
	})
}

// TestStartFailureInTheVMMShowsItsReason: QEMU refusing to start (1TiB of
// memory) writes why to the box's vm.log; the start error must say it
// rather than point at an empty console log.
func TestStartFailureInTheVMMShowsItsReason(t *testing.T) {
	e := newEnv(t)
	_, errs, code := e.run(nil, "run", "--rm", "--memory", "1TiB", e.image, "--", "true")
	if code != 125 || !strings.Contains(errs, "vm.log ends with") || !strings.Contains(errs, "cannot set up guest memory") {
		t.Fatalf("run --memory 1TiB: exit %d, want 125 and QEMU's reason:\n%s", code, errs)
	}
	if out := strings.TrimSpace(e.ok("ls", "-a", "-q")); out != "" {
		t.Fatalf("run --rm left a box after the failed start: %s", out)
	}
}
