package sdk

import (
	"errors"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// waitExit waits for the host's exit on a pidfd. It returns an error when
// it cannot (no pidfd_open), and the caller polls instead.
func waitExit(h host) error {
	fd, err := unix.PidfdOpen(h.pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	// The pidfd names whatever process has the PID now: make sure that is
	// still the host (a reparented plugin's parent PID has changed).
	if !h.alive() {
		return nil
	}
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if fds[0].Revents&unix.POLLIN != 0 {
			return nil
		}
		return errors.New("pidfd poll: unexpected events")
	}
}

func processExists(pid int) bool {
	return !errors.Is(unix.Kill(pid, 0), unix.ESRCH)
}

// listeningUnixSockets returns the paths of the unix sockets this process
// listens on.
func listeningUnixSockets() []string {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil
	}
	var paths []string
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if on, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || on == 0 {
			continue
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			continue
		}
		// Abstract sockets (a leading NUL, which x/sys shows as '@') have
		// no file.
		if ua, ok := sa.(*unix.SockaddrUnix); ok && ua.Name != "" && ua.Name[0] != '@' && ua.Name[0] != 0 {
			paths = append(paths, ua.Name)
		}
	}
	return paths
}
