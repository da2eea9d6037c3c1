package usernet

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

const (
	// dnsTryTimeout bounds one nameserver's answer; the next one is asked
	// after it. Guests retry on their own (glibc: 5 s, twice).
	dnsTryTimeout = 2 * time.Second
	// dnsTCPIdle ends a guest's DNS-over-TCP connection that sends nothing.
	dnsTCPIdle = 10 * time.Second
	// resolvConfTTL is how long the nameserver list is kept before the file
	// is read again (it changes when the host's network does).
	resolvConfTTL = 5 * time.Second
)

// dnsForwarder answers the guest's DNS queries by asking the host's
// nameservers from the host process. Every query is parsed first, so that
// a QueryPolicy sees its name and a malformed one never leaves the host.
type dnsForwarder struct {
	path   string
	policy QueryPolicy
	allow  *allowList // nil: every name resolves
	log    *slog.Logger
	stats  *counters

	mu      sync.Mutex
	servers []netip.AddrPort
	readAt  time.Time
}

func newDNSForwarder(path string, p Policy, log *slog.Logger, stats *counters) *dnsForwarder {
	qp, _ := p.(QueryPolicy)
	return &dnsForwarder{path: path, policy: qp, log: log, stats: stats}
}

// nameservers returns the host's nameservers, re-reading resolv.conf after
// resolvConfTTL. A file that cannot be read gives no nameservers (every
// query then gets SERVFAIL) and a debug log.
func (d *dnsForwarder) nameservers() []netip.AddrPort {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.readAt.IsZero() && time.Since(d.readAt) < resolvConfTTL {
		return d.servers
	}
	servers, err := readResolvConf(d.path)
	if err != nil {
		d.log.Debug("usernet: no nameservers for the guest's DNS", "err", err)
	}
	d.servers, d.readAt = servers, time.Now()
	return servers
}

func readResolvConf(path string) ([]netip.AddrPort, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read nameservers: %w", err)
	}
	defer f.Close()
	var out []netip.AddrPort
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(fields[1])
		if err != nil {
			continue
		}
		out = append(out, netip.AddrPortFrom(a.Unmap(), 53))
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("read nameservers from %s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s lists no nameserver", path)
	}
	return out, nil
}

// answer returns the reply to one guest query, or nil to drop it (not a
// DNS query at all). overTCP says how the guest asked and so how the
// nameservers are asked.
func (d *dnsForwarder) answer(ctx context.Context, q []byte, overTCP bool) []byte {
	var p dnsmessage.Parser
	hdr, err := p.Start(q)
	if err != nil || hdr.Response {
		return nil
	}
	d.stats.dnsQueries.Add(1)
	questions, err := p.AllQuestions()
	if err != nil || len(questions) != 1 || hdr.OpCode != 0 {
		return reply(hdr, questions, dnsmessage.RCodeFormatError)
	}
	name := questions[0].Name.String()
	if d.allow != nil {
		if err := d.allow.allowQuery(name); err != nil {
			d.stats.dnsRefused.Add(1)
			d.log.Debug("usernet: refused guest DNS query", "name", name, "reason", err.Error())
			return reply(hdr, questions, dnsmessage.RCodeRefused)
		}
	}
	if d.policy != nil {
		if err := d.policy.AllowQuery(name); err != nil {
			d.stats.dnsRefused.Add(1)
			d.log.Debug("usernet: refused guest DNS query", "name", name, "reason", err.Error())
			return reply(hdr, questions, dnsmessage.RCodeRefused)
		}
	}
	for _, ns := range d.nameservers() {
		r, err := exchange(ctx, ns, q, hdr.ID, overTCP)
		if err == nil {
			if d.allow != nil {
				d.allow.learn(name, r)
			}
			return r
		}
		d.log.Debug("usernet: nameserver did not answer", "nameserver", ns.String(), "name", name, "err", err)
		if ctx.Err() != nil {
			break
		}
	}
	d.stats.dnsFailures.Add(1)
	return reply(hdr, questions, dnsmessage.RCodeServerFailure)
}

// exchange asks one nameserver. Over UDP, datagrams that are not the answer
// to this query (wrong ID, not a response) are skipped until the deadline.
func exchange(ctx context.Context, ns netip.AddrPort, q []byte, id uint16, overTCP bool) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, dnsTryTimeout)
	defer cancel()
	network := "udp"
	if overTCP {
		network = "tcp"
	}
	var dialer net.Dialer
	c, err := dialer.DialContext(ctx, network, ns.String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	if deadline, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(deadline)
	}
	if overTCP {
		if err := writeTCPMessage(c, q); err != nil {
			return nil, err
		}
		r, err := readTCPMessage(c)
		if err != nil {
			return nil, err
		}
		if !isAnswerTo(r, id) {
			return nil, errors.New("the reply does not answer the query")
		}
		return r, nil
	}
	if _, err := c.Write(q); err != nil {
		return nil, err
	}
	buf := make([]byte, 65535)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		if isAnswerTo(buf[:n], id) {
			return buf[:n:n], nil
		}
	}
}

func isAnswerTo(r []byte, id uint16) bool {
	var p dnsmessage.Parser
	h, err := p.Start(r)
	return err == nil && h.Response && h.ID == id
}

// reply builds an answer without records carrying rcode.
func reply(q dnsmessage.Header, questions []dnsmessage.Question, rcode dnsmessage.RCode) []byte {
	h := dnsmessage.Header{
		ID: q.ID, Response: true, OpCode: q.OpCode,
		RecursionDesired: q.RecursionDesired, RecursionAvailable: true, RCode: rcode,
	}
	b := dnsmessage.NewBuilder(nil, h)
	if err := b.StartQuestions(); err == nil {
		for _, qq := range questions {
			if b.Question(qq) != nil {
				break
			}
		}
	}
	out, err := b.Finish()
	if err != nil {
		// Only questions we parsed go in, so this does not happen; an
		// answer with the bare header still tells the guest.
		bare := dnsmessage.NewBuilder(nil, h)
		out, _ = bare.Finish()
	}
	return out
}

func writeTCPMessage(w io.Writer, m []byte) error {
	b := make([]byte, 2+len(m))
	binary.BigEndian.PutUint16(b, uint16(len(m)))
	copy(b[2:], m)
	_, err := w.Write(b)
	return err
}

func readTCPMessage(r io.Reader) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	m := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(r, m); err != nil {
		return nil, err
	}
	return m, nil
}

// serveDNSUDP answers queries to 10.0.2.3:53/udp, each in its own goroutine
// (at most maxDNSActive at once; beyond that queries are dropped and the
// guest retries).
func (sv *session) serveDNSUDP(c *gonet.UDPConn) {
	sem := make(chan struct{}, maxDNSActive)
	buf := make([]byte, 65535)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		select {
		case sem <- struct{}{}:
		default:
			continue
		}
		q := append([]byte(nil), buf[:n]...)
		if !sv.tr.goTracked(func() {
			defer func() { <-sem }()
			if r := sv.n.dns.answer(sv.ctx, q, false); r != nil {
				_, _ = c.WriteTo(r, from)
			}
		}) {
			return
		}
	}
}

// serveDNSTCP answers queries to 10.0.2.3:53/tcp.
func (sv *session) serveDNSTCP(l *gonet.TCPListener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		if sv.n.stats.openTCP.Add(1) > maxTCPConns {
			sv.n.stats.openTCP.Add(-1)
			_ = c.Close()
			continue
		}
		if !sv.tr.add(c) {
			sv.n.stats.openTCP.Add(-1)
			return
		}
		if !sv.tr.goTracked(func() {
			defer func() {
				sv.n.stats.openTCP.Add(-1)
				sv.tr.remove(c)
				_ = c.Close()
			}()
			for {
				_ = c.SetReadDeadline(time.Now().Add(dnsTCPIdle))
				q, err := readTCPMessage(c)
				if err != nil {
					return
				}
				r := sv.n.dns.answer(sv.ctx, q, true)
				if r == nil || writeTCPMessage(c, r) != nil {
					return
				}
			}
		}) {
			_ = c.Close()
			return
		}
	}
}
