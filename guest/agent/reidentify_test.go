package agent_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/boxctl/boxctl/guest/agent"
	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/guest/proto/agentv1"
)

// recorder stands in for the PID 1 side of Reidentify (which changes the machine it runs
// on: the VM test covers it).
type recorder struct {
	mu  sync.Mutex
	ids []agent.Identity
}

func (r *recorder) reidentify(_ context.Context, id agent.Identity) (agent.Reidentified, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ids = append(r.ids, id)
	return agent.Reidentified{ClockStep: time.Hour, EntropyBits: 8 * len(id.Entropy), PreviousHostname: "old",
		NetworkReapplied: true, Warnings: []string{"w"}}, nil
}

func (r *recorder) calls() []agent.Identity {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]agent.Identity(nil), r.ids...)
}

func TestReidentify(t *testing.T) {
	rec := &recorder{}
	f := newFixture(t, func(c *agent.Config) { c.BoxID = "boot1"; c.Reidentify = rec.reidentify })
	ctx := ctxT(t)
	if info, err := f.client.Ping(ctx); err != nil || info.BoxID != "boot1" || info.ProtocolVersion != 3 {
		t.Fatalf("ping before: %+v %v; want the boot box ID and protocol 3", info, err)
	}
	now := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
	got, err := f.client.ReidentifyReport(ctx, agentclient.Identity{BoxID: "fork2", Hostname: "fork2", Now: now})
	if err != nil {
		t.Fatal(err)
	}
	want := agentclient.Reidentified{ClockStep: time.Hour, EntropyBits: 512, PreviousHostname: "old",
		PreviousBoxID: "boot1", NetworkReapplied: true, Warnings: []string{"w"}}
	if got.ClockStep != want.ClockStep || got.EntropyBits != want.EntropyBits || got.PreviousBoxID != want.PreviousBoxID ||
		got.PreviousHostname != want.PreviousHostname || !got.NetworkReapplied || len(got.Warnings) != 1 {
		t.Errorf("report = %+v, want %+v", got, want)
	}
	calls := rec.calls()
	if len(calls) != 1 || calls[0].BoxID != "fork2" || calls[0].Hostname != "fork2" || !calls[0].Now.Equal(now) || len(calls[0].Entropy) != 64 {
		t.Fatalf("applied %+v; want fork2 at %s with 64 bytes of client entropy", calls, now)
	}
	if info, err := f.client.Ping(ctx); err != nil || info.BoxID != "fork2" {
		t.Errorf("ping after: %+v %v; want box fork2", info, err)
	}
	// The client fills the time and fresh entropy itself.
	before := time.Now()
	if err := f.client.Reidentify(ctx, agentclient.Identity{BoxID: "fork2", Hostname: "fork2"}); err != nil {
		t.Fatal(err)
	}
	calls = rec.calls()
	if last := calls[len(calls)-1]; last.Now.Before(before.Add(-time.Second)) || string(last.Entropy) == string(calls[0].Entropy) {
		t.Errorf("defaults: now %s (call began %s), entropy repeated: %v", last.Now, before, string(last.Entropy) == string(calls[0].Entropy))
	}
}

// TestReidentifyRejectsBadRequests: each bad field is InvalidArgument naming it, and nothing
// is applied.
func TestReidentifyRejectsBadRequests(t *testing.T) {
	rec := &recorder{}
	f := newFixture(t, func(c *agent.Config) { c.Reidentify = rec.reidentify })
	ctx := ctxT(t)
	ok := func() *agentv1.ReidentifyRequest {
		return &agentv1.ReidentifyRequest{BoxId: "abc123", Hostname: "abc", Now: timestamppb.Now(), Entropy: make([]byte, 32)}
	}
	for _, tc := range []struct {
		field  string
		mutate func(*agentv1.ReidentifyRequest)
	}{
		{"box_id", func(r *agentv1.ReidentifyRequest) { r.BoxId = "" }},
		{"box_id", func(r *agentv1.ReidentifyRequest) { r.BoxId = "ABC" }},
		{"box_id", func(r *agentv1.ReidentifyRequest) { r.BoxId = strings.Repeat("a", 65) }},
		{"hostname", func(r *agentv1.ReidentifyRequest) { r.Hostname = "" }},
		{"hostname", func(r *agentv1.ReidentifyRequest) { r.Hostname = "a b" }},
		{"hostname", func(r *agentv1.ReidentifyRequest) { r.Hostname = strings.Repeat("h", 65) }},
		{"now", func(r *agentv1.ReidentifyRequest) { r.Now = nil }},
		{"now", func(r *agentv1.ReidentifyRequest) { r.Now = timestamppb.New(time.Unix(0, 0)) }},
		{"entropy", func(r *agentv1.ReidentifyRequest) { r.Entropy = nil }},
		{"entropy", func(r *agentv1.ReidentifyRequest) { r.Entropy = make([]byte, 31) }},
		{"entropy", func(r *agentv1.ReidentifyRequest) { r.Entropy = make([]byte, 513) }},
	} {
		req := ok()
		tc.mutate(req)
		_, err := f.client.API().Reidentify(ctx, req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s bad (%v): got %v, want InvalidArgument naming %s", tc.field, req, err, tc.field)
		}
	}
	if _, err := f.client.API().Reidentify(ctx, ok()); err != nil {
		t.Errorf("the valid request: %v", err)
	}
	if n := len(rec.calls()); n != 1 {
		t.Errorf("%d identities applied, want only the valid one", n)
	}
	// The client refuses what the agent would, before sending.
	if err := f.client.Reidentify(ctx, agentclient.Identity{BoxID: "Bad", Hostname: "h"}); err == nil || !strings.Contains(err.Error(), "box ID") {
		t.Errorf("client with a bad box ID: %v", err)
	}
	if n := len(rec.calls()); n != 1 {
		t.Errorf("%d identities applied after the client's refusal, want 1", n)
	}
}

// TestReidentifyUnimplemented: an agent that cannot apply an identity (as an agent of
// protocol 2 does not know the call) gives an error the core recognises with
// agentclient.IsUnimplemented.
func TestReidentifyUnimplemented(t *testing.T) {
	f := newFixture(t, nil)
	err := f.client.Reidentify(ctxT(t), agentclient.Identity{BoxID: "abc", Hostname: "abc"})
	if !agentclient.IsUnimplemented(err) {
		t.Errorf("got %v, want Unimplemented", err)
	}
	if info, err := f.client.Ping(ctxT(t)); err != nil || info.BoxID != "" {
		t.Errorf("ping: %+v %v; want no box ID", info, err)
	}
}
