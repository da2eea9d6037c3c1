package core

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/boxctl/boxctl/core/model"
)

// ParsePort reads a port forward as the CLI's -p takes it:
// [HOSTIP:]HOSTPORT:BOXPORT[/tcp|udp].
func ParsePort(s string) (model.PortMapping, error) {
	bad := func(why string) (model.PortMapping, error) {
		return model.PortMapping{}, fmt.Errorf("%q: %s; write [HOSTIP:]HOSTPORT:BOXPORT[/tcp|udp], e.g. 8080:80: %w", s, why, ErrInvalidArgument)
	}
	spec, proto, _ := strings.Cut(s, "/")
	if proto == "" {
		proto = "tcp"
	}
	if proto != "tcp" && proto != "udp" {
		return bad("the protocol must be tcp or udp")
	}
	parts := strings.Split(spec, ":")
	var hostIP string
	switch len(parts) {
	case 2:
	case 3:
		hostIP = parts[0]
		if net.ParseIP(hostIP) == nil {
			return bad(hostIP + " is not an IP address")
		}
		parts = parts[1:]
	default:
		return bad("it needs a host port and a box port")
	}
	port := func(p string) (uint16, bool) {
		n, err := strconv.ParseUint(p, 10, 16)
		return uint16(n), err == nil && n > 0
	}
	hp, ok1 := port(parts[0])
	gp, ok2 := port(parts[1])
	if !ok1 || !ok2 {
		return bad("ports are numbers from 1 to 65535")
	}
	return model.PortMapping{HostIP: hostIP, HostPort: hp, GuestPort: gp, Protocol: proto}, nil
}
