package pluginhost_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core/pluginhost"
	"github.com/boxctl/boxctl/internal/proc"
	"github.com/boxctl/boxctl/test/testbin"
)

// socketsIn returns the names of the unix sockets in dir.
func socketsIn(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if e.Type()&os.ModeSocket != 0 {
			names = append(names, e.Name())
		}
	}
	return names
}

// privateTempDir points TMPDIR (go-plugin's default socket directory) of
// the plugins this test starts at a directory of its own.
func privateTempDir(t *testing.T) string {
	t.Helper()
	tmp := testbin.ShortTempDir(t)
	t.Setenv("TMPDIR", tmp)
	return tmp
}

func TestPluginSocketsLiveUnderTheHomeAndGoOnClose(t *testing.T) {
	tmp := privateTempDir(t)
	h, cfg := newHost(t, "")
	if _, err := h.VMM(context.Background()); err != nil {
		t.Fatal(err)
	}
	root := pluginhost.SocketRoot(cfg.Home)
	entries, err := os.ReadDir(root)
	if err != nil || len(entries) != 1 {
		t.Fatalf("%s: %v %v, want one directory for this host", root, entries, err)
	}
	self, err := proc.Self()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, entries[0].Name())
	if want := fmt.Sprintf("%d-%d-", self.PID, self.StartTicks); !strings.HasPrefix(entries[0].Name(), want) {
		t.Errorf("socket directory %s is not named after this process (%s...)", entries[0].Name(), want)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("socket directory mode: %v %v, want 0700", st.Mode(), err)
	}
	if socks := socketsIn(t, dir); len(socks) != 1 || !strings.HasPrefix(socks[0], "plugin") {
		t.Errorf("sockets in %s: %v, want the plugin's", dir, socks)
	}
	if socks := socketsIn(t, tmp); len(socks) != 0 {
		t.Errorf("sockets in the temp dir: %v", socks)
	}
	h.Close()
	if entries, _ := os.ReadDir(root); len(entries) != 0 {
		t.Fatalf("%s after Close: %v", root, entries)
	}
}

func TestPluginSocketsGoToTheTempDirWhenTheHomeIsTooLong(t *testing.T) {
	tmp := privateTempDir(t)
	home := filepath.Join(testbin.ShortTempDir(t), strings.Repeat("h", 70))
	file := testbin.WriteFile(t, testbin.ShortTempDir(t), "config.hcl", fmt.Sprintf("home = %q\nvmm = \"procvmm\"\n", home))
	cfg, err := config.LoadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	h := pluginhost.New(cfg, pluginhost.WithSearchDirs(bins.Dir(t, "boxctl-plugin-procvmm")), pluginhost.WithLogger(hclog.NewNullLogger(), nil))
	defer h.Close()
	if _, err := h.VMM(context.Background()); err != nil {
		t.Fatalf("a home too long for socket paths under it must still work: %v", err)
	}
	if socks := socketsIn(t, tmp); len(socks) != 1 {
		t.Fatalf("sockets in the temp dir: %v, want the plugin's", socks)
	}
	h.Close()
	if socks := socketsIn(t, tmp); len(socks) != 0 {
		t.Fatalf("sockets in the temp dir after Close: %v", socks)
	}
}

func TestSweepRemovesSocketDirsOfDeadHosts(t *testing.T) {
	home := testbin.ShortTempDir(t)
	root := pluginhost.SocketRoot(home)
	self, err := proc.Self()
	if err != nil {
		t.Fatal(err)
	}
	// A host that ran and died.
	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	dead, err := proc.Of(sleeper.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	_ = sleeper.Process.Kill()
	_ = sleeper.Wait()

	dirs := map[string]bool{ // name: kept
		fmt.Sprintf("%d-%d-0001", self.PID, self.StartTicks):   true,  // a live host
		fmt.Sprintf("%d-%d-0002", dead.PID, dead.StartTicks):   false, // a dead one
		fmt.Sprintf("%d-%d-0003", self.PID, self.StartTicks+1): false, // a dead one whose PID is ours now
		"notes": true, // not ours: left alone
	}
	for name := range dirs {
		if err := os.MkdirAll(filepath.Join(root, name), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// A socket its plugin, killed, left behind.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(root, fmt.Sprintf("%d-%d-0002", dead.PID, dead.StartTicks), "plugin1"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()

	pluginhost.SweepSocketDirs(home)
	for name, kept := range dirs {
		_, err := os.Stat(filepath.Join(root, name))
		if kept && err != nil {
			t.Errorf("%s was removed: %v", name, err)
		}
		if !kept && !os.IsNotExist(err) {
			t.Errorf("%s was not swept (%v)", name, err)
		}
	}
}

func TestSweepOfAHomeWithoutSocketsChangesNothing(t *testing.T) {
	home := testbin.ShortTempDir(t)
	pluginhost.SweepSocketDirs(home)
	if _, err := os.Stat(filepath.Join(home, "run")); !os.IsNotExist(err) {
		t.Fatalf("the sweep made %s/run (%v)", home, err)
	}
}
