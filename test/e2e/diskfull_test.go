package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDiskFullPausesTheBoxUntilSpaceIsFreed puts the home on a small
// filesystem and lets a guest write until the host side is full: QEMU
// stops the guest on the failed write, the box shows it, commands fail at
// once saying what to do, and the box continues once space is freed.
func TestDiskFullPausesTheBoxUntilSpaceIsFreed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs for the home")
	}
	e := newEnv(t)
	mnt := filepath.Join(filepath.Dir(e.home), "small")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=192m,mode=0700", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v: %s)", err, out)
	}
	t.Cleanup(func() {
		_, _, _ = e.run(nil, "rm", "-a", "-f")
		_ = exec.Command("pkill", "-9", "-f", mnt).Run()
		_ = exec.Command("umount", "-l", mnt).Run()
	})
	e.home = filepath.Join(mnt, "h")
	e.ok("run", "-d", "--name", "filler", e.image)
	// Whatever the box has not used yet, minus a little, goes to ballast
	// the test frees later.
	ballast := filepath.Join(mnt, "ballast")
	if out, err := exec.Command("sh", "-c", "dd if=/dev/zero of="+ballast+" bs=1M count=64 2>&1").CombinedOutput(); err != nil {
		t.Fatalf("ballast: %v %s", err, out)
	}

	// The writer's exec ends (with an error) once the guest is stopped.
	writer := make(chan string, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := e.command(ctx, "exec", "filler", "--", "dd", "if=/dev/zero", "of=/fill", "bs=1M", "count=512")
		out, _ := cmd.CombinedOutput()
		if ctx.Err() != nil {
			writer <- "hung: " + string(out)
			return
		}
		writer <- string(out)
	}()

	deadline := time.Now().Add(2 * time.Minute)
	for {
		out := e.ok("ls", "-a", "--format", "{{.Name}} {{.State}}")
		if strings.Contains(out, "filler Paused (disk full)") {
			break
		}
		if time.Now().After(deadline) {
			logs, _ := filepath.Glob(filepath.Join(e.home, "boxes", "*", "*.log"))
			var b strings.Builder
			for _, l := range logs {
				data, _ := os.ReadFile(l)
				if len(data) > 3000 {
					data = data[len(data)-3000:]
				}
				b.WriteString("\n--- " + l + " ---\n" + string(data))
			}
			df, _ := exec.Command("df", "-h", mnt).CombinedOutput()
			t.Fatalf("the box never showed that its disk is full: %q\n%s%s", out, df, b.String())
		}
		time.Sleep(500 * time.Millisecond)
	}
	if out := <-writer; strings.HasPrefix(out, "hung") || !strings.Contains(out, "no space left on device") {
		t.Fatalf("the writing exec did not end with the reason: %s", out)
	}
	start := time.Now()
	_, errs, code := e.run(nil, "exec", "filler", "--", "true")
	if code != 125 || !strings.Contains(errs, "no space left on device") || !strings.Contains(errs, "boxctl unpause filler") {
		t.Fatalf("exec into the full box: exit %d: %s", code, errs)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("exec into the full box took %s to fail", d)
	}

	// Space freed: unpause continues the guest, and it is usable again.
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-o", "remount,size=1g", mnt).CombinedOutput(); err != nil {
		t.Fatalf("grow the tmpfs: %v %s", err, out)
	}
	e.ok("unpause", "filler")
	if out := e.ok("exec", "filler", "--", "sh", "-c", "rm -f /fill; echo alive"); out != "alive\n" {
		t.Fatalf("after unpause: %q", out)
	}
	if out := e.ok("ls", "--format", "{{.Name}} {{.Status}}"); !strings.Contains(out, "filler running") {
		t.Fatalf("after unpause: %q", out)
	}
	e.ok("rm", "-f", "filler")
}
