package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestExecWhileTheBoxIsStoppedAndRemoved races execs against stop and
// rm -f of their box: every exec must end (with the command's status or an
// error saying the box went away), never hang.
func TestExecWhileTheBoxIsStoppedAndRemoved(t *testing.T) {
	e := newEnv(t)
	for round := 0; round < 3; round++ {
		name := fmt.Sprintf("race%d", round)
		e.ok("run", "-d", "--name", name, e.image)
		var wg sync.WaitGroup
		results := make(chan string, 8)
		runBounded := func(args ...string) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			cmd := e.command(ctx, args...)
			out, err := cmd.CombinedOutput()
			if ctx.Err() != nil {
				results <- fmt.Sprintf("boxctl %s hung (killed after 90s): %s", strings.Join(args, " "), out)
				return
			}
			_ = err // any exit status is fine: the box is going away
		}
		for i := 0; i < 3; i++ {
			wg.Add(1)
			go runBounded("exec", name, "--", "sleep", "600")
		}
		time.Sleep(time.Second)
		wg.Add(2)
		go runBounded("stop", "-t", "2", name)
		go runBounded("rm", "-f", name)
		wg.Add(1)
		go runBounded("exec", name, "--", "true")
		wg.Wait()
		close(results)
		for r := range results {
			t.Error(r)
		}
		_, _, _ = e.run(nil, "rm", "-f", name)
	}
	if out := strings.TrimSpace(e.ok("ls", "-a", "-q")); out != "" {
		t.Fatalf("boxes left: %q", out)
	}
}
