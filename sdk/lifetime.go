package sdk

import (
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-plugin"
)

// HostPIDEnv is the environment variable in which boxctl passes a plugin
// the PID of the process that started it (the CLI, a box monitor, or a Go
// program embedding package core). Serve watches that process and exits
// when it is gone. Without it the plugin watches its parent process.
const HostPIDEnv = "BOXCTL_PLUGIN_HOST_PID"

// hostPollInterval is how often a plugin looks at its host where it cannot
// wait for the host's exit (no pidfd: kernels before 5.3, seccomp filters,
// other systems).
const hostPollInterval = 500 * time.Millisecond

// A plugin must not outlive the process it serves, however that process
// ends: a host killed with SIGKILL (or by the OOM killer) never gets to stop
// its plugins, and go-plugin's server runs until its client says goodbye.
// So the plugin watches the host itself.
//
// PR_SET_PDEATHSIG, set by the host when it starts the plugin, is not
// enough on its own: Linux sends the signal when the *thread* that forked
// the child exits, not the process, and a Go program forks from whatever
// thread the goroutine happens to run on; the Go runtime may end that thread
// (a locked goroutine returning) while the host lives on. boxctl's host sets
// it as a second line of defence, from a thread it keeps for the plugin's
// lifetime (core/pluginhost), which also covers plugins not built with this
// sdk. The watch here is the mechanism.
//
// exitWithHost starts the watch. A plugin whose host is gone already exits
// at once.
func exitWithHost() {
	// A write to the stdio pipes of a dead host would kill the plugin with
	// SIGPIPE before it removes its socket; with SIGPIPE notified, the
	// write fails with EPIPE instead and the watch decides. The channel is
	// never read: os/signal drops what does not fit.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	// A SIGTERM (which is also the host's death signal) ends the plugin
	// the same orderly way.
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() {
		<-term
		quit()
	}()

	h, ok := currentHost()
	if !ok {
		quit()
	}
	go func() {
		h.wait()
		quit()
	}()
}

// quit ends the plugin: it removes its go-plugin sockets and exits.
// It logs nothing: stderr is a pipe to the host, which may be gone.
func quit() {
	removeSockets(listeningUnixSockets(), socketDir())
	os.Exit(0)
}

// socketDir is where go-plugin makes this plugin's listening socket.
func socketDir() string {
	if dir := os.Getenv(plugin.EnvUnixSocketDir); dir != "" {
		return dir
	}
	return os.TempDir()
}

// removeSockets removes the go-plugin sockets (dir/plugin*) among paths:
// the other listening sockets a plugin may have are its own business.
func removeSockets(paths []string, dir string) {
	dir = filepath.Clean(dir)
	for _, p := range paths {
		if filepath.Dir(p) == dir && strings.HasPrefix(filepath.Base(p), "plugin") {
			_ = os.Remove(p)
		}
	}
}

// host is the process a plugin serves.
type host struct {
	pid int
	// parent: pid is the plugin's parent process, so the host is gone
	// exactly when the plugin's parent PID changes (it is reparented to
	// init or a subreaper), whatever became of the PID.
	parent bool
}

// currentHost returns the process to watch, and false if it is gone
// already.
func currentHost() (host, bool) {
	ppid := os.Getppid()
	pid, err := strconv.Atoi(os.Getenv(HostPIDEnv))
	if err != nil || pid <= 0 {
		// A host that does not say who it is: watch the parent. A
		// parent of 1 means the host died before the plugin looked;
		// boxctl running as PID 1 (in a container) says so.
		return host{pid: ppid, parent: true}, ppid != 1
	}
	if pid == ppid {
		return host{pid: pid, parent: true}, true
	}
	// Started through a wrapper that did not exec, or reparented because
	// the host died already: watch the host by its PID.
	h := host{pid: pid}
	return h, h.alive()
}

func (h host) alive() bool {
	if h.parent {
		return os.Getppid() == h.pid
	}
	return processExists(h.pid)
}

// wait blocks until the host is gone: on a pidfd where the system has
// them, so the plugin exits at once, else by polling.
func (h host) wait() {
	if err := waitExit(h); err == nil {
		return
	}
	h.poll()
}

// poll returns when the host is gone, looking every hostPollInterval.
func (h host) poll() {
	for h.alive() {
		time.Sleep(hostPollInterval)
	}
}
