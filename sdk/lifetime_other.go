//go:build !linux

package sdk

import "errors"

// waitExit needs a pidfd, which only Linux has; the caller polls.
func waitExit(host) error { return errors.ErrUnsupported }

// processExists cannot be told cheaply here; a host watched by PID (not
// the parent) is taken as alive. boxctl's hosts are the plugin's parent.
func processExists(int) bool { return true }

// listeningUnixSockets is not implemented here: go-plugin's sockets of a
// plugin whose host died stay behind (boxctl's host sweeps its socket
// directories).
func listeningUnixSockets() []string { return nil }
