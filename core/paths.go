package core

import (
	"fmt"
	"path/filepath"
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
