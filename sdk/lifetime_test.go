package sdk

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
)

// The lifetime tests re-execute this test binary in a role: a "parent"
// (the host) that starts a child in another role and sleeps, or a child
// that is a plugin.
const (
	testRoleEnv      = "BOXCTL_SDK_TEST_ROLE"
	testChildRoleEnv = "BOXCTL_SDK_TEST_CHILD_ROLE"
)

func TestMain(m *testing.M) {
	switch os.Getenv(testRoleEnv) {
	case "":
		os.Exit(m.Run())
	case "parent":
		child := exec.Command(os.Args[0])
		child.Env = append(os.Environ(), testRoleEnv+"="+os.Getenv(testChildRoleEnv))
		child.Stdout, child.Stderr = os.Stdout, os.Stderr
		if err := child.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "start child:", err)
			os.Exit(1)
		}
		fmt.Printf("child %d\n", child.Process.Pid)
		time.Sleep(time.Hour) // until killed
	case "serve":
		// A real plugin, serving no role: its lifetime is what counts.
		Serve(ServeConfig{Logger: hclog.NewNullLogger()})
	case "poll":
		// The watch without a pidfd, as on kernels before 5.3.
		h, ok := currentHost()
		if !ok {
			os.Exit(3)
		}
		ln, err := net.Listen("unix", filepath.Join(socketDir(), "plugin-poll"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Printf("1|1|unix|%s|grpc|\n", ln.Addr())
		h.poll()
		quit()
	}
	os.Exit(0)
}

// family is a parent process running a plugin child.
type family struct {
	parent *exec.Cmd
	child  int
	socket string
}

// startFamily starts a parent that starts a child in role, and waits for
// the child's go-plugin handshake line.
func startFamily(t *testing.T, role string) *family {
	t.Helper()
	dir, err := os.MkdirTemp("", "sdk") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	hs := Handshake()
	parent := exec.Command(os.Args[0])
	parent.Env = append(os.Environ(), testRoleEnv+"=parent", testChildRoleEnv+"="+role,
		hs.MagicCookieKey+"="+hs.MagicCookieValue, plugin.EnvUnixSocketDir+"="+dir)
	// Files, not pipes the test copies: the child outlives the parent and
	// holds them.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	parent.Stdout = w
	stderr, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	parent.Stderr = stderr
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	f := &family{parent: parent}
	t.Cleanup(func() {
		_ = parent.Process.Kill()
		_ = parent.Wait()
		if f.child > 0 {
			_ = syscall.Kill(f.child, syscall.SIGKILL)
		}
	})

	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	timeout := time.After(30 * time.Second)
	for f.child == 0 || f.socket == "" {
		select {
		case line, ok := <-lines:
			if !ok {
				out, _ := os.ReadFile(stderr.Name())
				t.Fatalf("the plugin ended before its handshake; stderr:\n%s", out)
			}
			if pid, ok := strings.CutPrefix(line, "child "); ok {
				f.child, _ = strconv.Atoi(pid)
			} else if parts := strings.Split(line, "|"); len(parts) >= 4 && parts[2] == "unix" {
				f.socket = parts[3]
			}
		case <-timeout:
			t.Fatal("no handshake from the plugin within 30 s")
		}
	}
	if filepath.Dir(f.socket) != dir {
		t.Fatalf("socket %s is not in PLUGIN_UNIX_SOCKET_DIR %s", f.socket, dir)
	}
	return f
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && len(b) > i+2 && b[i+2] != 'Z'
}

// waitGone waits for pid to exit; it is not our child, so nothing to reap.
func waitGone(t *testing.T, pid int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("plugin %d still running %s after its host was killed", pid, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (f *family) assertServing(t *testing.T) {
	t.Helper()
	if !alive(f.child) {
		t.Fatal("the plugin exited although its host runs")
	}
	if _, err := os.Stat(f.socket); err != nil {
		t.Fatalf("the plugin's socket: %v", err)
	}
}

func (f *family) killParent(t *testing.T) {
	t.Helper()
	if err := f.parent.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = f.parent.Wait()
}

func (f *family) assertSocketGone(t *testing.T) {
	t.Helper()
	if _, err := os.Lstat(f.socket); !os.IsNotExist(err) {
		t.Fatalf("socket %s left behind (%v)", f.socket, err)
	}
}

func TestPluginExitsWhenItsHostIsKilled(t *testing.T) {
	for _, role := range []string{"serve", "poll"} { // poll: without a pidfd
		t.Run(role, func(t *testing.T) {
			f := startFamily(t, role)
			// The watch does not fire while the host lives.
			time.Sleep(2 * hostPollInterval)
			f.assertServing(t)
			f.killParent(t)
			waitGone(t, f.child, 5*time.Second)
			f.assertSocketGone(t)
		})
	}
}

func TestPluginExitsOnSIGTERMAndRemovesItsSocket(t *testing.T) {
	f := startFamily(t, "serve")
	if err := syscall.Kill(f.child, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitGone(t, f.child, 5*time.Second)
	f.assertSocketGone(t)
}

func TestPluginWhoseHostIsGoneAtStartExitsAtOnce(t *testing.T) {
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	hs := Handshake()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), testRoleEnv+"=serve", hs.MagicCookieKey+"="+hs.MagicCookieValue,
		HostPIDEnv+"="+strconv.Itoa(gone.Process.Pid))
	done := make(chan error, 1)
	var out strings.Builder
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil || out.Len() > 0 {
			t.Fatalf("exit %v, stdout %q; want a silent exit 0 before serving", err, out.String())
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("a plugin whose host is gone did not exit")
	}
}

func TestCurrentHost(t *testing.T) {
	ppid := os.Getppid()
	t.Setenv(HostPIDEnv, "")
	if h, ok := currentHost(); !ok || h.pid != ppid || !h.parent {
		t.Errorf("no %s: %+v %v, want the parent %d", HostPIDEnv, h, ok, ppid)
	}
	t.Setenv(HostPIDEnv, strconv.Itoa(ppid))
	if h, ok := currentHost(); !ok || h.pid != ppid || !h.parent {
		t.Errorf("%s = parent: %+v %v", HostPIDEnv, h, ok)
	}
	// A host that is not the parent (a wrapper that did not exec) is
	// watched by its PID.
	t.Setenv(HostPIDEnv, strconv.Itoa(os.Getpid()))
	if h, ok := currentHost(); !ok || h.pid != os.Getpid() || h.parent {
		t.Errorf("%s = another live process: %+v %v", HostPIDEnv, h, ok)
	}
}

func TestWaitExitOfAHostThatIsNotTheParent(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := host{pid: cmd.Process.Pid}
	done := make(chan struct{})
	go func() {
		h.wait()
		close(done)
	}()
	select {
	case <-done:
		t.Fatal("wait returned while the host runs")
	case <-time.After(2 * hostPollInterval):
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("wait did not return after the host was killed")
	}
}

func TestRemoveSocketsOnlyRemovesGoPluginSockets(t *testing.T) {
	dir := t.TempDir()
	other := t.TempDir()
	mine := filepath.Join(dir, "plugin123")
	own := filepath.Join(dir, "agent.sock")
	elsewhere := filepath.Join(other, "plugin456")
	for _, p := range []string{mine, own, elsewhere} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	removeSockets([]string{mine, own, elsewhere}, dir+"/")
	if _, err := os.Stat(mine); !os.IsNotExist(err) {
		t.Error("go-plugin socket not removed")
	}
	for _, p := range []string{own, elsewhere} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s removed: %v", p, err)
		}
	}
}
