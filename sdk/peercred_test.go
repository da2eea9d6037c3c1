package sdk

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestPluginPeerCheckAcceptsOnlyThePluginAndItsDescendants(t *testing.T) {
	// sh stands in for a wrapper: it starts sleep, the "real plugin".
	cmd := exec.Command("sh", "-c", "sleep 30 & echo $!; wait")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	buf := make([]byte, 32)
	n, err := out.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	grandchild, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = (&os.Process{Pid: grandchild}).Kill() })
	check := pluginPeerCheck(cmd)
	uid := os.Getuid()
	for _, pid := range []int{cmd.Process.Pid, grandchild} {
		if err := check(pid, uid); err != nil {
			t.Errorf("pid %d (the plugin or its child): %v", pid, err)
		}
	}
	// This process (a sibling impersonating the plugin) and init are not.
	for _, pid := range []int{os.Getpid(), 1} {
		if err := check(pid, uid); !errors.Is(err, errPeer) {
			t.Errorf("pid %d: got %v, want errPeer", pid, err)
		}
	}
	if err := check(cmd.Process.Pid, uid+1); !errors.Is(err, errPeer) || !strings.Contains(err.Error(), "uid") {
		t.Errorf("another uid: got %v, want errPeer naming the uid", err)
	}
}

func TestHostPeerCheckAcceptsOnlyTheHost(t *testing.T) {
	t.Setenv(HostPIDEnv, strconv.Itoa(os.Getppid()))
	check := hostPeerCheck()
	if err := check(os.Getppid(), os.Getuid()); err != nil {
		t.Errorf("the host: %v", err)
	}
	if err := check(os.Getpid(), os.Getuid()); !errors.Is(err, errPeer) {
		t.Errorf("another process of the same user: got %v, want errPeer", err)
	}
	if err := check(os.Getppid(), os.Getuid()+1); !errors.Is(err, errPeer) {
		t.Errorf("the host's PID with another uid: got %v, want errPeer", err)
	}
}

// The credentials the kernel reports are the connecting process's.
func TestPeerCredOfAUnixConnection(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := net.DialTimeout("unix", sock, 5*time.Second)
		if err == nil {
			defer c.Close()
			time.Sleep(time.Second)
		}
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pid, uid, err := peerCred(c)
	if err != nil || pid != os.Getpid() || uid != os.Getuid() {
		t.Fatalf("peerCred = %d, %d, %v; want %d, %d", pid, uid, err, os.Getpid(), os.Getuid())
	}
}
