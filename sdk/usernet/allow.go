package usernet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/boxctl/boxctl/sdk"
)

// AllowRule is one destination of Config.Allow.
type AllowRule = sdk.NetworkAllow

const (
	// minNameTTL and maxNameTTL bound how long a resolved address of an
	// allowed name is kept: a zero TTL would have the host re-resolve
	// without pause, a huge one would keep an address the name left long
	// ago.
	minNameTTL = 5 * time.Second
	maxNameTTL = time.Hour
	// nameRetry is how soon a name that did not resolve is asked again.
	nameRetry = 5 * time.Second
)

var (
	errNotAllowed     = errors.New("not on the allow-list")
	errNameNotAllowed = errors.New("the name is not on the allow-list")
)

// allowList is Config.Allow in force: CIDR rules match at once, host rules
// through the addresses their names resolved to (by the host's nameservers,
// kept for the answer's TTL).
type allowList struct {
	prefixes []AllowRule
	hosts    map[string][]uint16 // name with trailing dot -> ports (0: any)

	mu    sync.Mutex
	addrs map[string]map[netip.Addr]time.Time // name -> address -> expiry
	next  map[string]time.Time                // name -> when to resolve it again
}

func newAllowList(rules []AllowRule) (*allowList, error) {
	a := &allowList{hosts: map[string][]uint16{}, addrs: map[string]map[netip.Addr]time.Time{}, next: map[string]time.Time{}}
	for _, r := range rules {
		if err := r.Validate(); err != nil {
			return nil, fmt.Errorf("usernet: %w", err)
		}
		if r.Prefix.IsValid() {
			a.prefixes = append(a.prefixes, r)
			continue
		}
		name := fqdn(r.Host)
		a.hosts[name] = append(a.hosts[name], r.Port)
	}
	return a, nil
}

func fqdn(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, ".")) + "."
}

func portMatches(want, got uint16) bool { return want == 0 || want == got }

// allow says whether dst is on the list now.
func (a *allowList) allow(dst netip.AddrPort) error {
	addr := dst.Addr().Unmap()
	for _, r := range a.prefixes {
		if r.Prefix.Contains(addr) && portMatches(r.Port, dst.Port()) {
			return nil
		}
	}
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	for name, ports := range a.hosts {
		exp, ok := a.addrs[name][addr]
		if !ok || now.After(exp) {
			continue
		}
		for _, p := range ports {
			if portMatches(p, dst.Port()) {
				return nil
			}
		}
	}
	return errNotAllowed
}

// allowQuery says whether the guest may look name up: only the allowed
// host names resolve.
func (a *allowList) allowQuery(name string) error {
	if _, ok := a.hosts[fqdn(name)]; ok {
		return nil
	}
	return errNameNotAllowed
}

// learn records the A and AAAA records of an answer to an allowed name
// (CNAME targets included: they answer the same question), each until its
// TTL ends, so that the addresses the guest was told are the ones it may
// reach.
func (a *allowList) learn(name string, answer []byte) {
	name = fqdn(name)
	if _, ok := a.hosts[name]; !ok {
		return
	}
	var m dnsmessage.Message
	if err := m.Unpack(answer); err != nil || m.Header.RCode != dnsmessage.RCodeSuccess {
		return
	}
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	set := a.addrs[name]
	if set == nil {
		set = map[netip.Addr]time.Time{}
		a.addrs[name] = set
	}
	minTTL := maxNameTTL
	for _, rr := range m.Answers {
		var ip netip.Addr
		switch b := rr.Body.(type) {
		case *dnsmessage.AResource:
			ip = netip.AddrFrom4(b.A)
		case *dnsmessage.AAAAResource:
			ip = netip.AddrFrom16(b.AAAA).Unmap()
		default:
			continue
		}
		ttl := min(max(time.Duration(rr.Header.TTL)*time.Second, minNameTTL), maxNameTTL)
		minTTL = min(minTTL, ttl)
		if exp := now.Add(ttl); exp.After(set[ip]) {
			set[ip] = exp
		}
	}
	for ip, exp := range set {
		if now.After(exp) {
			delete(set, ip)
		}
	}
	if n := now.Add(minTTL); a.next[name].IsZero() || n.Before(a.next[name]) || a.next[name].Before(now) {
		a.next[name] = n
	}
}

// due returns the names to resolve now and when the next one is due.
func (a *allowList) due(now time.Time) ([]string, time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var names []string
	soonest := now.Add(maxNameTTL)
	for name := range a.hosts {
		n := a.next[name]
		if !n.After(now) {
			names = append(names, name)
			// Until the answer arrives (or does not), try again later.
			n = now.Add(nameRetry)
			a.next[name] = n
		}
		if n.Before(soonest) {
			soonest = n
		}
	}
	return names, soonest
}

// resolveLoop keeps the allowed names resolved: each is asked at start and
// again when the shortest TTL of its last answer ends (nameRetry after a
// failure), through the same host nameservers the guest's own queries go
// to.
func (sv *session) resolveLoop(a *allowList) {
	types := []dnsmessage.Type{dnsmessage.TypeA, dnsmessage.TypeAAAA}
	for {
		names, next := a.due(time.Now())
		for _, name := range names {
			for _, typ := range types {
				r, err := sv.n.dns.resolve(sv.ctx, name, typ)
				if err != nil {
					sv.n.log.Debug("usernet: resolve an allowed name", "name", name, "type", typ.String(), "err", err)
					continue
				}
				a.learn(name, r)
			}
		}
		t := time.NewTimer(time.Until(next))
		select {
		case <-sv.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// resolve asks the host's nameservers for name (the host process asks, as
// for the guest's queries) and returns the first answer.
func (d *dnsForwarder) resolve(ctx context.Context, name string, typ dnsmessage.Type) ([]byte, error) {
	n, err := dnsmessage.NewName(name)
	if err != nil {
		return nil, err
	}
	id := uint16(time.Now().UnixNano())
	q, err := (&dnsmessage.Message{
		Header:    dnsmessage.Header{ID: id, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: n, Type: typ, Class: dnsmessage.ClassINET}},
	}).Pack()
	if err != nil {
		return nil, err
	}
	var last error = errors.New("no nameserver")
	for _, ns := range d.nameservers() {
		r, err := exchange(ctx, ns, q, id, false)
		if err == nil {
			return r, nil
		}
		last = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, last
}
