package agent

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestReaperReapAll runs the reap-all Reaper in a child process made a subreaper (the
// position PID 1 is in): orphaned grandchildren must be reaped, and the statuses of the
// processes started through the Reaper must reach their starters, never the orphan loop.
func TestReaperReapAll(t *testing.T) {
	if os.Getenv("BOXCTL_REAPER_HELPER") == "1" {
		reaperHelper()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestReaperReapAll$", "-test.v")
	cmd.Env = append(os.Environ(), "BOXCTL_REAPER_HELPER=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "REAPER-OK") {
		t.Fatalf("helper failed: %v\n%s", err, out)
	}
}

func reaperHelper() {
	fail := func(format string, args ...any) {
		fmt.Printf("REAPER-FAIL: "+format+"\n", args...)
		os.Exit(1)
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fail("prctl: %v", err)
	}
	r := NewReaper(true)
	defer r.Close()
	sh, err := exec.LookPath("sh")
	if err != nil {
		fail("no sh: %v", err)
	}
	devnull, _ := os.Open(os.DevNull)
	attr := &syscall.ProcAttr{Files: []uintptr{devnull.Fd(), os.Stdout.Fd(), os.Stderr.Fd()}}

	// Each script leaves an orphan behind (reparented to us) and exits with its own code.
	var wg sync.WaitGroup
	errs := make(chan string, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(code int) {
			defer wg.Done()
			script := fmt.Sprintf("sleep 0.0%d & exit %d", code%10, code)
			_, ch, err := r.Start(sh, []string{"sh", "-c", script}, attr)
			if err != nil {
				errs <- err.Error()
				return
			}
			select {
			case ws := <-ch:
				if ws.ExitStatus() != code {
					errs <- fmt.Sprintf("script %d: exit %d", code, ws.ExitStatus())
				}
			case <-time.After(30 * time.Second):
				errs <- fmt.Sprintf("script %d: no status", code)
			}
		}(i + 1)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		fail("%s", e)
	}
	// The orphans (sleep 0.0N) die shortly; none may stay a zombie.
	deadline := time.Now().Add(10 * time.Second)
	for {
		z := zombiesOf(os.Getpid())
		if z == 0 {
			break
		}
		if time.Now().After(deadline) {
			fail("%d zombie children left", z)
		}
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Println("REAPER-OK")
}

// zombiesOf counts children of pid (zombie or not: all of them must be gone).
func zombiesOf(pid int) int {
	entries, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			n++
		}
	}
	return n
}
