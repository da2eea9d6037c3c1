package sdk

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"

	"google.golang.org/grpc/credentials"
)

// Who may talk on a plugin connection.
//
// The connection is a unix socket that go-plugin makes in the directory the
// host names (core/pluginhost: <home>/run/plugins/<host>/, mode 0700, in a
// home that must belong to the boxctl user and not be writable by others).
// It used to be wrapped in go-plugin's AutoMTLS as well. That cost a key
// pair and certificate at both ends of every plugin start (P-521: tens of
// milliseconds of CPU, measured by bench/rpc) and TLS records on every call,
// and it protected against nothing the kernel does not stop already: no
// other local user can reach the socket through its directory, and nobody
// on the local machine but root (who can read either process's memory
// anyway) can read a unix socket's traffic. What TLS also gave, knowing who
// is at the other end, the kernel says directly: SO_PEERCRED names the
// process that connected (for the plugin) or listens (for the host), with
// its UID, and cannot be forged by the peer. So each end checks it at
// connect time:
//
//   - The plugin accepts only a connection from its host process (the PID
//     in HostPIDEnv, else its parent) running as the plugin's own UID.
//   - The host accepts only a server that is the plugin process it started,
//     or a descendant of it (a wrapper script that starts the real plugin),
//     running as the host's UID.
//
// A plugin served by a host that asks for AutoMTLS (an older boxctl) still
// speaks TLS to it: go-plugin sets that up, and the peer check stays out of
// the way.

// peerCredentials is a gRPC transport "security" that does no encryption
// and checks the unix socket peer's credentials at the handshake.
type peerCredentials struct {
	// check decides whether the peer (pid, uid) may talk.
	check func(pid, uid int) error
}

// peerInfo is what a checked peer is known by.
type peerInfo struct {
	credentials.CommonAuthInfo
	PID, UID int
}

func (peerInfo) AuthType() string { return "peercred" }

func (c peerCredentials) handshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	pid, uid, err := peerCred(conn)
	if err == nil {
		err = c.check(pid, uid)
	}
	if err != nil {
		_ = conn.Close()
		return nil, nil, fmt.Errorf("plugin connection refused: %w", err)
	}
	return conn, peerInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, PID: pid, UID: uid}, nil
}

func (c peerCredentials) ClientHandshake(_ context.Context, _ string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c.handshake(conn)
}

func (c peerCredentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c.handshake(conn)
}

func (peerCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (c peerCredentials) Clone() credentials.TransportCredentials { return c }

func (peerCredentials) OverrideServerName(string) error { return nil }

// errPeer: the other end of a plugin connection is not who it must be.
var errPeer = errors.New("unexpected peer")

// hostPeerCheck is the plugin's check: only its host, as its own user.
func hostPeerCheck() func(pid, uid int) error {
	h, _ := currentHost()
	self := os.Getuid()
	return func(pid, uid int) error {
		if uid != self {
			return fmt.Errorf("%w: the connecting process %d runs as uid %d, this plugin as uid %d", errPeer, pid, uid, self)
		}
		if pid != h.pid {
			return fmt.Errorf("%w: process %d connected, but this plugin serves process %d only", errPeer, pid, h.pid)
		}
		return nil
	}
}

// pluginPeerCheck is the host's check: only the plugin process it started
// (cmd, started by the time the host connects) or a descendant, as the
// host's user.
func pluginPeerCheck(cmd *exec.Cmd) func(pid, uid int) error {
	self := os.Getuid()
	return func(pid, uid int) error {
		if cmd.Process == nil {
			return fmt.Errorf("%w: the plugin %s has not been started", errPeer, cmd.Path)
		}
		if uid != self {
			return fmt.Errorf("%w: the socket's server (process %d) runs as uid %d, boxctl as uid %d", errPeer, pid, uid, self)
		}
		if !descendant(pid, cmd.Process.Pid) {
			return fmt.Errorf("%w: the socket is served by process %d, which is not the plugin %s (process %d) boxctl started", errPeer, pid, cmd.Path, cmd.Process.Pid)
		}
		return nil
	}
}
