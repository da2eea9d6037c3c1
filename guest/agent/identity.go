package agent

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/boxctl/boxctl/guest/proto/agentv1"
	"github.com/boxctl/boxctl/sdk/guestboot"
)

// Bounds of Reidentify's entropy: enough for the CRNG's 256-bit key, little enough to be
// cheap and to stay under the kernel's pool size.
const (
	MinEntropy = 32
	MaxEntropy = 512
)

// Identity is who a restored guest is now: a validated Reidentify request.
type Identity struct {
	BoxID    string
	Hostname string
	// Now is the host's wall-clock time.
	Now time.Time
	// Entropy is MinEntropy to MaxEntropy random bytes from the host.
	Entropy []byte
}

// Reidentified is what applying an Identity did, for the host's log.
type Reidentified struct {
	ClockStep        time.Duration
	EntropyBits      int
	PreviousHostname string
	NetworkReapplied bool
	// Warnings are steps that went wrong without making the guest a twin.
	Warnings []string
}

// BoxID is the box ID the agent reports in Ping.
func (a *Agent) BoxID() string {
	a.idMu.Lock()
	defer a.idMu.Unlock()
	return a.boxID
}

// Reidentify implements agentv1.AgentServer: it validates the request, has
// Config.Reidentify apply it, and then reports the new box ID in Ping.
func (a *Agent) Reidentify(ctx context.Context, req *agentv1.ReidentifyRequest) (*agentv1.ReidentifyResponse, error) {
	id, err := identityOf(req)
	if err != nil {
		return nil, err
	}
	if a.cfg.Reidentify == nil {
		return nil, status.Error(codes.Unimplemented, "reidentify is not available in this agent")
	}
	// One at a time: two calls interleaving their steps could leave the host name of one
	// and the box ID of the other.
	a.reidentifyMu.Lock()
	defer a.reidentifyMu.Unlock()
	done, err := a.cfg.Reidentify(ctx, id)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "reidentify as box %s: %v", id.BoxID, err)
	}
	a.idMu.Lock()
	prevID := a.boxID
	a.boxID = id.BoxID
	a.idMu.Unlock()
	a.log.Info("reidentified", "box", id.BoxID, "previous_box", prevID, "hostname", id.Hostname,
		"previous_hostname", done.PreviousHostname, "clock_step", done.ClockStep,
		"entropy_bits", done.EntropyBits, "network", done.NetworkReapplied, "warnings", done.Warnings)
	return &agentv1.ReidentifyResponse{
		ClockStep:        durationpb.New(done.ClockStep),
		EntropyBits:      uint32(done.EntropyBits),
		PreviousHostname: done.PreviousHostname,
		PreviousBoxId:    prevID,
		NetworkReapplied: done.NetworkReapplied,
		Warnings:         done.Warnings,
	}, nil
}

// identityOf checks a Reidentify request; its errors are InvalidArgument and name the field.
func identityOf(req *agentv1.ReidentifyRequest) (Identity, error) {
	bad := func(field string, err error) error {
		return status.Errorf(codes.InvalidArgument, "reidentify: %s: %v", field, err)
	}
	if err := guestboot.ValidBoxID(req.GetBoxId()); err != nil {
		return Identity{}, bad("box_id", err)
	}
	if err := guestboot.ValidHostname(req.GetHostname()); err != nil {
		return Identity{}, bad("hostname", err)
	}
	if req.GetNow() == nil {
		return Identity{}, status.Error(codes.InvalidArgument, "reidentify: now is required (the host's wall-clock time)")
	}
	if err := req.GetNow().CheckValid(); err != nil {
		return Identity{}, bad("now", err)
	}
	now := req.GetNow().AsTime()
	if now.Year() < 2000 {
		// Setting a guest's clock to 1970 is a host bug, not a time.
		return Identity{}, status.Errorf(codes.InvalidArgument, "reidentify: now %s is before the year 2000", now.Format(time.RFC3339))
	}
	if n := len(req.GetEntropy()); n < MinEntropy || n > MaxEntropy {
		return Identity{}, status.Errorf(codes.InvalidArgument, "reidentify: entropy has %d bytes; %d to %d are required", n, MinEntropy, MaxEntropy)
	}
	return Identity{BoxID: req.GetBoxId(), Hostname: req.GetHostname(), Now: now, Entropy: req.GetEntropy()}, nil
}
