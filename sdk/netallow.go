package sdk

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// NetworkAllow is one destination of a VM's egress allow-list: an address
// range (Prefix) or a host name (Host, resolved by the host side of the
// network), and a port (0: every port). Exactly one of Prefix and Host is
// set.
type NetworkAllow struct {
	Prefix netip.Prefix
	Host   string
	Port   uint16
}

// String is the rule as ParseNetworkAllow reads it.
func (a NetworkAllow) String() string {
	dst := a.Host
	if a.Prefix.IsValid() {
		dst = a.Prefix.String()
		if a.Prefix.IsSingleIP() {
			dst = a.Prefix.Addr().String()
		}
		if a.Port != 0 && a.Prefix.Addr().Is6() {
			dst = "[" + dst + "]"
		}
	}
	if a.Port != 0 {
		return dst + ":" + strconv.Itoa(int(a.Port))
	}
	return dst
}

// Validate says what is wrong with a rule, if anything.
func (a NetworkAllow) Validate() error {
	switch {
	case a.Prefix.IsValid() && a.Host != "":
		return fmt.Errorf("allow rule %q: give an address range or a host name, not both", a.String())
	case a.Prefix.IsValid():
		if a.Prefix != a.Prefix.Masked() {
			return fmt.Errorf("allow rule %q: %s has bits set past the prefix length (did you mean %s?)", a.String(), a.Prefix, a.Prefix.Masked())
		}
		return nil
	case a.Host == "":
		return fmt.Errorf("allow rule: no destination")
	default:
		return validHostName(a.Host)
	}
}

// ParseNetworkAllow reads HOST[:PORT], IP[:PORT], CIDR[:PORT] or, for IPv6
// with a port, [IP6]:PORT and [CIDR6]:PORT. A port of 0 or none means every
// port.
func ParseNetworkAllow(s string) (NetworkAllow, error) {
	bad := func(format string, args ...any) (NetworkAllow, error) {
		return NetworkAllow{}, fmt.Errorf("allow rule %q: %s (want HOST[:PORT], IP[:PORT] or CIDR[:PORT], e.g. example.com:443 or 10.1.0.0/16)", s, fmt.Sprintf(format, args...))
	}
	if s == "" {
		return bad("empty")
	}
	dst, port := s, ""
	switch {
	case strings.HasPrefix(s, "["):
		end := strings.Index(s, "]")
		if end < 0 {
			return bad("no closing ]")
		}
		dst, port = s[1:end], strings.TrimPrefix(s[end+1:], ":")
		if rest := s[end+1:]; rest != "" && !strings.HasPrefix(rest, ":") {
			return bad("unexpected %q after ]", rest)
		}
	case strings.Count(s, ":") == 1:
		dst, port, _ = strings.Cut(s, ":")
	}
	var a NetworkAllow
	if port != "" || strings.HasSuffix(s, ":") {
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil || p == 0 {
			return bad("port %q is not a number from 1 to 65535", port)
		}
		a.Port = uint16(p)
	}
	if strings.Contains(dst, "/") {
		pfx, err := netip.ParsePrefix(dst)
		if err != nil {
			return bad("%q is not a CIDR", dst)
		}
		a.Prefix = netip.PrefixFrom(pfx.Addr().Unmap(), pfx.Bits()-unmapBits(pfx.Addr()))
	} else if ip, err := netip.ParseAddr(dst); err == nil {
		ip = ip.Unmap()
		a.Prefix = netip.PrefixFrom(ip, ip.BitLen())
	} else if strings.ContainsAny(dst, ":") {
		return bad("%q is not an IP address", dst)
	} else {
		a.Host = strings.ToLower(strings.TrimSuffix(dst, "."))
	}
	if err := a.Validate(); err != nil {
		return bad("%v", strings.TrimPrefix(err.Error(), fmt.Sprintf("allow rule %q: ", a.String())))
	}
	return a, nil
}

// unmapBits is how many prefix bits an IPv4-mapped IPv6 address loses when
// it is read as IPv4.
func unmapBits(a netip.Addr) int {
	if a.Is4In6() {
		return 96
	}
	return 0
}

// validHostName checks a DNS name: labels of letters, digits, '-' and '_',
// 1 to 63 bytes each, 253 bytes at most.
func validHostName(h string) error {
	h = strings.TrimSuffix(h, ".")
	if len(h) == 0 || len(h) > 253 {
		return fmt.Errorf("host name %q: want 1 to 253 characters", h)
	}
	for _, l := range strings.Split(h, ".") {
		if len(l) == 0 || len(l) > 63 {
			return fmt.Errorf("host name %q: empty or over-long label", h)
		}
		for _, c := range l {
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
			if !ok {
				return fmt.Errorf("host name %q: character %q is not allowed in a host name", h, c)
			}
		}
	}
	return nil
}
