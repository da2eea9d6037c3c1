package integration

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
)

// ownerEnv makes the test binary act as an embedding program: it opens a
// runtime, starts a non-detached box, prints its ID and waits to be killed.
const ownerEnv = "BOXCTL_TEST_OWNER"

func runOwner() int {
	var home, cfgPath, bin, name string
	_, _ = fmt.Sscan(os.Getenv(ownerEnv), &home, &cfgPath, &bin, &name, &testImage)
	ctx := context.Background()
	cfg, err := config.LoadFile(cfgPath)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	rt, err := core.Open(ctx, core.WithConfig(cfg), core.WithHome(home),
		core.WithMonitorBinary(filepath.Join(bin, "boxctl")), core.WithPluginDirs(bin),
		core.WithLogger(hclog.NewNullLogger(), nil))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	box, err := rt.Create(ctx, core.BoxOptions{Name: name, Config: model.BoxConfig{Image: testImage}})
	if err == nil {
		err = box.Start(ctx)
	}
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Println("ready", box.ID())
	select {} // until killed
}

func TestNonDetachedBoxStopsWhenOwnerIsKilled(t *testing.T) {
	e := newEnv(t, "")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %s %s %s", ownerEnv, e.home, e.config, e.bin, "owned", testImage))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready ") {
		_ = cmd.Process.Kill()
		t.Fatalf("owner: %q %v", line, err)
	}
	b := e.info(e.runtime(), "owned")
	if b.Status != model.StatusRunning || b.Run.Detached || b.Run.Owner.PID != cmd.Process.Pid {
		t.Fatalf("owned box: status %s run %+v", b.Status, b.Run)
	}
	// kill -9: no Close, no deferred cleanup in the owner.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	stopped := e.waitStatus("owned", model.StatusStopped, 15*time.Second)
	waitDead(t, b.Run.VM.PID, 5*time.Second)
	if stopped.Run.Exit == nil || !strings.Contains(stopped.Run.Exit.Reason, "started the box exited") {
		t.Fatalf("exit %+v", stopped.Run.Exit)
	}
}

// startOwned starts a non-detached box from a child process acting as its
// owner and returns the owner process and the box.
func startOwned(t *testing.T, e *env, name string) (*exec.Cmd, *model.Box) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %s %s %s", ownerEnv, e.home, e.config, e.bin, name, testImage))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready ") {
		t.Fatalf("owner: %q %v", line, err)
	}
	return cmd, e.info(e.runtime(), name)
}

func TestBoxWhoseOwnerAndMonitorDiedIsStoppedByTheNextCommand(t *testing.T) {
	e := newEnv(t, "")
	owner, b := startOwned(t, e, "abandoned")
	kill9(t, b.Run.Monitor.PID)
	if err := owner.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = owner.Wait()
	out := e.ok("ls", "-a", "--format", "{{.Name}} {{.Status}}")
	if !strings.Contains(out, "abandoned stopped") {
		t.Fatalf("ls after the owner and the monitor died: %q", out)
	}
	waitDead(t, b.Run.VM.PID, 5*time.Second)
	s := e.info(e.runtime(), "abandoned")
	if s.Run.Exit == nil || !strings.Contains(s.Run.Exit.Reason, "owner exited") {
		t.Fatalf("exit %+v", s.Run.Exit)
	}
}
