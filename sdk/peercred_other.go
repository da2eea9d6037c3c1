//go:build !linux

package sdk

import (
	"fmt"
	"net"
)

// peerCred is Linux-only (SO_PEERCRED); elsewhere a plugin connection is
// refused rather than left unchecked.
func peerCred(net.Conn) (pid, uid int, err error) {
	return 0, 0, fmt.Errorf("%w: peer credentials are not supported on this system", errPeer)
}

func descendant(pid, ancestor int) bool { return pid == ancestor }
