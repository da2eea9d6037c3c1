package core

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// layout names the files and directories under a home directory.
type layout struct{ home string }

func (l layout) boxesDir() string            { return filepath.Join(l.home, "boxes") }
func (l layout) boxDir(id string) string     { return filepath.Join(l.home, "boxes", id) }
func (l layout) lockPath(id string) string   { return filepath.Join(l.home, "locks", id+".lock") }
func (l layout) launchFile(id string) string { return filepath.Join(l.boxDir(id), "launch.json") }
func (l layout) pidFile(id string) string    { return filepath.Join(l.boxDir(id), "vm.pid") }
func (l layout) monitorSocket(id string) string {
	return filepath.Join(l.boxDir(id), "monitor.sock")
}
func (l layout) monitorLog(id string) string { return filepath.Join(l.boxDir(id), "monitor.log") }
func (l layout) consoleLog(id string) string { return filepath.Join(l.boxDir(id), "console.log") }

// maxSocketPath is the longest unix socket path Linux accepts.
const maxSocketPath = 107

// checkSocketPaths refuses a home whose box directories would hold unix
// socket paths too long for the kernel.
func (l layout) checkSocketPaths() error {
	longest := filepath.Join(l.boxDir("0123456789abcdef0123456789abcdef"), "monitor.sock")
	if len(longest) > maxSocketPath {
		return fmt.Errorf("home %s is too long: unix socket paths under it would exceed %d bytes; use a shorter --home", l.home, maxSocketPath)
	}
	return nil
}

// checkOwnership refuses a home that another user could tamper with: the
// home, and each directory and file directly in it or in its plugin data
// directory, must belong to this user and not be writable by group or
// others. Otherwise another user could swap a box's disk for one whose
// backing file names a file only this user (root, say) may read, and this
// user's hypervisor would open it.
func (l layout) checkOwnership() error {
	uid := uint32(os.Geteuid())
	if err := checkOwned(l.home, uid); err != nil {
		return err
	}
	for _, dir := range []string{l.home, filepath.Join(l.home, "plugins-data")} {
		names, err := readNames(dir)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return fmt.Errorf("check home %s: %w", l.home, err)
		}
		for _, n := range names {
			if err := checkOwned(filepath.Join(dir, n), uid); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkOwned(path string, uid uint32) error {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed meanwhile
		}
		return fmt.Errorf("check %s: %w", path, err)
	}
	what := "file"
	if st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		what = "directory"
	}
	if st.Uid != uid {
		return fmt.Errorf("unsafe home: %s %s belongs to uid %d, not to you (uid %d): another user controls what boxctl reads and runs from it; "+
			"use a home only you own (--home, or home in the config) or fix it with `chown -R %d %s`: %w",
			what, path, st.Uid, uid, uid, path, ErrPermission)
	}
	if mode := st.Mode & 0o7777; mode&0o022 != 0 {
		return fmt.Errorf("unsafe home: %s %s is writable by other users (mode %04o): they could swap the files boxctl and its hypervisor open; "+
			"fix it with `chmod go-w %s`: %w", what, path, mode, path, ErrPermission)
	}
	return nil
}
