package vmtest

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/sdk/guestboot"
)

// TestReidentify boots the real guest with a user-mode NIC and gives it a new identity, as
// the host does after restoring a memory snapshot: the host name (uname, /etc/hostname,
// /etc/hosts of the box), the box ID Ping reports, the clock (an hour ahead, then back),
// the network (still configured, neighbour cache flushed) and the random generator
// (reseeded: the ioctls succeeded). A command running meanwhile is not disturbed.
func TestReidentify(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	g, err := BuildGuest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rootDisk, dataDisk := filepath.Join(dir, "root.ext4"), filepath.Join(dir, "data.qcow2")
	if err := MakeRootDisk(ctx, rootDisk); err != nil {
		t.Fatal(err)
	}
	if err := MakeDataDisk(ctx, dataDisk, 64); err != nil {
		t.Fatal(err)
	}
	bootArgs := guestboot.Default()
	bootArgs.Hostname = "cold"
	bootArgs.BoxID = "c01d"
	bootArgs.UserNetwork()
	vm := boot(t, ctx, Config{Guest: g, RootDisk: rootDisk, DataDisk: dataDisk, Dir: dir, Cmdline: g.Cmdline, Boot: &bootArgs,
		ExtraArgs: []string{"-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0,romfile="}})
	c := vm.Client
	sh := func(script string) string {
		t.Helper()
		r := execIn(t, ctx, c, agentclient.ExecRequest{Argv: []string{"sh", "-c", script}}, nil)
		if r.ExitCode != 0 {
			t.Fatalf("%s: %+v", script, r)
		}
		return strings.TrimSpace(r.stdout)
	}

	info, err := c.Ping(ctx)
	if err != nil || info.BoxID != "c01d" || info.ProtocolVersion != 3 {
		t.Fatalf("ping after a cold boot: %+v %v; want box c01d from the command line, protocol 3", info, err)
	}
	// Something for the neighbour cache: the gateway's entry, complete (flags 0x2).
	_ = execIn(t, ctx, c, agentclient.ExecRequest{Argv: []string{"ping", "-c1", "-W2", "10.0.2.2"}}, nil)
	if arp := sh("cat /proc/net/arp"); !completeNeighbour(arp, "10.0.2.2") {
		t.Errorf("no complete neighbour entry for the gateway before Reidentify (the flush cannot be checked):\n%s", arp)
	}
	randBefore := sh("head -c 32 /dev/urandom | od -An -tx1")

	// A command that runs across the calls.
	running := make(chan result, 1)
	go func() {
		var out bytes.Buffer
		res, err := c.Exec(ctx, agentclient.ExecRequest{Argv: []string{"sh", "-c", "sleep 3; echo survived"}}, nil, &out, io.Discard, nil, nil)
		if err != nil {
			res.ExitCode = -1
		}
		running <- result{ExitResult: res, stdout: out.String()}
	}()
	time.Sleep(500 * time.Millisecond)

	future := time.Now().Add(time.Hour)
	began := time.Now()
	rep, err := c.ReidentifyReport(ctx, agentclient.Identity{BoxID: "f0rk1", Hostname: "fork-a", Now: future})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("reidentify took %s (host side, TCG): %+v", time.Since(began).Round(time.Millisecond), rep)
	if rep.ClockStep < 50*time.Minute || rep.ClockStep > 70*time.Minute || rep.EntropyBits != 512 ||
		rep.PreviousHostname != "cold" || rep.PreviousBoxID != "c01d" || !rep.NetworkReapplied || len(rep.Warnings) != 0 {
		t.Errorf("report %+v; want a step of about +1h, 512 bits, previous cold/c01d, network re-applied, no warnings", rep)
	}
	if got := sh("hostname"); got != "fork-a" {
		t.Errorf("hostname = %q, want fork-a", got)
	}
	if got := sh("cat /etc/hostname"); got != "fork-a" {
		t.Errorf("/etc/hostname = %q, want fork-a", got)
	}
	if got := sh("cat /etc/hosts"); !strings.Contains(got, "127.0.1.1\tfork-a") || strings.Contains(got, "cold") {
		t.Errorf("/etc/hosts = %q, want fork-a and no cold", got)
	}
	if info, err := c.Ping(ctx); err != nil || info.BoxID != "f0rk1" {
		t.Errorf("ping: %+v %v; want box f0rk1", info, err)
	}
	checkClock(t, ctx, c, time.Hour)
	if arp := sh("cat /proc/net/arp"); completeNeighbour(arp, "10.0.2.2") {
		t.Errorf("the gateway's neighbour entry survived the flush:\n%s", arp)
	}
	if routes := sh("cat /proc/net/route"); !defaultRoute(routes) {
		t.Errorf("no default route after re-applying the network:\n%s", routes)
	}
	if addr := sh("ip -4 addr show 2>/dev/null || ifconfig"); !strings.Contains(addr, "10.0.2.15") {
		t.Errorf("the guest lost its address:\n%s", addr)
	}
	if randAfter := sh("head -c 32 /dev/urandom | od -An -tx1"); randAfter == randBefore {
		t.Errorf("/dev/urandom read the same bytes before and after: %s", randAfter)
	}

	// Back to the real time; the same identity again changes nothing else (idempotent).
	rep, err = c.ReidentifyReport(ctx, agentclient.Identity{BoxID: "f0rk1", Hostname: "fork-a"})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ClockStep > -50*time.Minute || rep.ClockStep < -70*time.Minute || rep.PreviousHostname != "fork-a" || rep.PreviousBoxID != "f0rk1" {
		t.Errorf("second report %+v; want a step of about -1h from fork-a/f0rk1", rep)
	}
	checkClock(t, ctx, c, 0)
	if got := sh("hostname; cat /etc/hostname"); got != "fork-a\nfork-a" {
		t.Errorf("after the second call: %q", got)
	}
	if routes := sh("cat /proc/net/route"); !defaultRoute(routes) {
		t.Errorf("no default route after re-applying the network twice:\n%s", routes)
	}

	select {
	case r := <-running:
		if r.ExitCode != 0 || strings.TrimSpace(r.stdout) != "survived" {
			t.Errorf("the command running across Reidentify: %+v", r)
		}
	case <-ctx.Done():
		t.Fatal("the command running across Reidentify never ended")
	}
}

// checkClock asserts the guest's wall clock reads the host's plus offset, within a second
// either side of the interval the question took (so a slow exec under TCG cannot fail it).
func checkClock(t *testing.T, ctx context.Context, c *agentclient.Client, offset time.Duration) {
	t.Helper()
	before := time.Now().Add(offset)
	r := execIn(t, ctx, c, agentclient.ExecRequest{Argv: []string{"date", "+%s"}}, nil)
	after := time.Now().Add(offset)
	secs, err := strconv.ParseInt(strings.TrimSpace(r.stdout), 10, 64)
	if err != nil {
		t.Fatalf("date +%%s: %+v", r)
	}
	guest := time.Unix(secs, 0)
	// date truncates to the second: the guest's time is in [guest, guest+1s).
	if guest.Add(time.Second).Before(before.Add(-time.Second)) || guest.After(after.Add(time.Second)) {
		t.Errorf("guest clock %s, host%+v between %s and %s", guest.UTC(), offset, before.UTC(), after.UTC())
	}
}

// completeNeighbour says whether /proc/net/arp has a resolved (ATF_COM) entry for addr.
func completeNeighbour(table, addr string) bool {
	for _, line := range strings.Split(table, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == addr {
			flags, err := strconv.ParseUint(strings.TrimPrefix(f[2], "0x"), 16, 32)
			if err == nil && flags&0x2 != 0 {
				return true
			}
		}
	}
	return false
}

// defaultRoute says whether /proc/net/route has a route to 0.0.0.0/0.
func defaultRoute(table string) bool {
	for _, line := range strings.Split(table, "\n") {
		f := strings.Fields(line)
		if len(f) >= 8 && f[1] == "00000000" && f[7] == "00000000" {
			return true
		}
	}
	return false
}
