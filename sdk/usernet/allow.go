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
// reach. It returns the shortest TTL it kept, false when the answer held
// no address.
func (a *allowList) learn(name string, answer []byte) (time.Duration, bool) {
	name = fqdn(name)
	if _, ok := a.hosts[name]; !ok {
		return 0, false
	}
	var m dnsmessage.Message
	if err := m.Unpack(answer); err != nil || m.Header.RCode != dnsmessage.RCodeSuccess {
		return 0, false
	}
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	set := a.addrs[name]
	if set == nil {
		set = map[netip.Addr]time.Time{}
		a.addrs[name] = set
	}
	shortest, found := maxNameTTL, false
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
		shortest, found = min(shortest, ttl), true
		if exp := now.Add(ttl); exp.After(set[ip]) {
			set[ip] = exp
		}
	}
	for ip, exp := range set {
		if now.After(exp) {
			delete(set, ip)
		}
	}
	return shortest, found
}

// resolveAt sets when the host resolves name next.
func (a *allowList) resolveAt(name string, t time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.next[name] = t
}

// due returns the names to resolve now, and marks them to be tried again
// after nameRetry should their lookups not settle it.
func (a *allowList) due(now time.Time) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var names []string
	for name := range a.hosts {
		if !a.next[name].After(now) {
			names = append(names, name)
			a.next[name] = now.Add(nameRetry)
		}
	}
	return names
}

// soonest is when the next name is due.
func (a *allowList) soonest() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	var t time.Time
	for name := range a.hosts {
		if n := a.next[name]; t.IsZero() || n.Before(t) {
			t = n
		}
	}
	return t
}

// resolveLoop keeps the allowed names resolved: each is asked at start and
// again when the shortest TTL of its last answer ends (nameRetry after a
// failure), through the same host nameservers the guest's own queries go
// to.
func (sv *session) resolveLoop(a *allowList) {
	types := []dnsmessage.Type{dnsmessage.TypeA, dnsmessage.TypeAAAA}
	for {
		for _, name := range a.due(time.Now()) {
			next, found := maxNameTTL, false
			for _, typ := range types {
				r, err := sv.n.dns.resolve(sv.ctx, name, typ)
				if err != nil {
					sv.n.log.Debug("usernet: resolve an allowed name", "name", name, "type", typ.String(), "err", err)
					continue
				}
				if ttl, ok := a.learn(name, r); ok {
					// Ask again a little before the addresses expire, so
					// that a name whose addresses stay keeps working.
					next, found = min(next, ttl*9/10), true
				}
			}
			if !found {
				next = nameRetry // no address (yet): ask again soon
			}
			a.resolveAt(name, time.Now().Add(next))
		}
		t := time.NewTimer(time.Until(a.soonest()))
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
