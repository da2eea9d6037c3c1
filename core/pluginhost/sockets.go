package pluginhost

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/boxctl/boxctl/internal/proc"
)

// Plugin sockets. go-plugin makes each plugin's listening socket in
// os.TempDir() unless the plugin is told otherwise, and a plugin killed
// before it can clean up leaves its socket there forever. So each Host
// gives its plugins a directory of its own under the home,
//
//	<home>/run/plugins/<pid>-<start ticks>-<random>/
//
// named after the host process's identity (core/proc: PID and start time,
// which survive PID reuse) plus a random part, because one process may run
// several hosts (a box monitor's own, and the runtime it opens to remove an
// auto-remove box). Close removes it; a runtime that opens sweeps the
// directories of hosts whose process is gone (SweepSocketDirs).

// maxSocketPath is the longest unix socket path Linux accepts
// (sizeof(sun_path) - 1), as in core's check of the home.
const maxSocketPath = 107

// longestSocketName is go-plugin's socket file name at its longest:
// "plugin" and a random uint32 in decimal.
const longestSocketName = len("plugin4294967295")

// SocketRoot is the directory under a home that holds the hosts' socket
// directories.
func SocketRoot(home string) string { return filepath.Join(home, "run", "plugins") }

// socketDir returns the host's socket directory, making it on first use
// (and again should someone have removed it). It returns "" when the home
// is too long for socket paths under it; the plugins then use go-plugin's
// default (os.TempDir()), and still remove their sockets when they exit.
func (h *Host) socketDir() string {
	h.sockOnce.Do(h.makeSocketDir)
	if h.sockDir != "" {
		if err := os.MkdirAll(h.sockDir, 0o700); err != nil {
			h.log.Debug("plugin sockets go to the temp dir", "reason", err)
			return ""
		}
	}
	return h.sockDir
}

// makeSocketDir picks the host's socket directory and makes it.
func (h *Host) makeSocketDir() {
	if h.cfg.Home == "" {
		return
	}
	home, err := filepath.Abs(h.cfg.Home)
	var self proc.Ident
	if err == nil {
		self, err = proc.Self()
	}
	if err != nil {
		h.log.Debug("plugin sockets go to the temp dir", "reason", err)
		return
	}
	root := SocketRoot(home)
	for range 10 {
		dir := filepath.Join(root, fmt.Sprintf("%d-%d-%04x", self.PID, self.StartTicks, rand.N(0x10000)))
		if len(dir)+1+longestSocketName > maxSocketPath {
			h.log.Debug("plugin sockets go to the temp dir: the home is too long for socket paths under it", "dir", dir, "max", maxSocketPath)
			return
		}
		err := os.MkdirAll(root, 0o700)
		if err == nil {
			err = os.Mkdir(dir, 0o700)
		}
		if err == nil {
			h.sockDir = dir
			return
		}
		if !os.IsExist(err) {
			h.log.Debug("plugin sockets go to the temp dir", "reason", err)
			return
		}
	}
}

// removeSocketDir removes the host's socket directory, if it made one.
func (h *Host) removeSocketDir() {
	h.sockOnce.Do(func() {}) // no directory is made after this
	if h.sockDir != "" {
		_ = os.RemoveAll(h.sockDir)
	}
}

// SweepSocketDirs removes the socket directories under home whose host
// process is gone, with whatever sockets their plugins left. It runs when
// a runtime opens, so it is cheap when nothing is stale: one directory
// read, plus one look at /proc per live host. Entries it did not make are
// left alone.
func SweepSocketDirs(home string) {
	root := SocketRoot(home)
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		owner, ok := socketDirOwner(e.Name())
		if !ok || hostAlive(owner) {
			continue
		}
		_ = os.RemoveAll(filepath.Join(root, e.Name()))
	}
}

// socketDirOwner parses <pid>-<start ticks>-<random>.
func socketDirOwner(name string) (proc.Ident, bool) {
	parts := strings.Split(name, "-")
	if len(parts) != 3 {
		return proc.Ident{}, false
	}
	pid, err1 := strconv.Atoi(parts[0])
	ticks, err2 := strconv.ParseUint(parts[1], 10, 64)
	if err1 != nil || err2 != nil || pid <= 0 {
		return proc.Ident{}, false
	}
	return proc.Ident{PID: pid, StartTicks: ticks}, true
}

// hostAlive reports whether the process with owner's PID and start time
// runs. The name has no boot ID: after a reboot a process with the same
// PID and start time keeps a stale directory until it exits, which is
// harmless.
func hostAlive(owner proc.Ident) bool {
	cur, err := proc.Of(owner.PID)
	return err == nil && cur.StartTicks == owner.StartTicks
}
