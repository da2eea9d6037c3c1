package agent

import (
	"context"
	"errors"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/boxctl/boxctl/guest/proto/agentv1"
)

// Filesystem freeze ioctls, _IOWR('X', 119, int) and _IOWR('X', 120, int); x/sys/unix does
// not define them. Their argument is ignored.
const (
	fiFreeze = 0xC0045877
	fiThaw   = 0xC0045878
)

// Freeze leases: how long Quiesce freezes the writable filesystem when the host does not
// say, and the most it may ask for. A host that needs longer renews the lease.
const (
	DefaultFreezeLease = 10 * time.Second
	MaxFreezeLease     = 60 * time.Second
)

// freezeState is the one freeze of the writable filesystem and its lease. The lease timer
// thaws by itself, so a host that died between Quiesce and Thaw never leaves the guest
// frozen; gen tells a timer of an earlier freeze or lease (already fired and waiting for mu)
// that it has nothing to do.
type freezeState struct {
	mu     sync.Mutex
	frozen bool
	since  time.Time // when the filesystem became frozen
	timer  *time.Timer
	gen    uint64
	// expired holds how long the last freeze lasted when its lease, not a Thaw, ended it;
	// the next Thaw reports it once.
	expired    time.Duration
	hasExpired bool
}

// Quiesce implements agentv1.AgentServer: freeze the writable filesystem for a lease, or
// renew the lease of the current freeze.
func (a *Agent) Quiesce(ctx context.Context, req *agentv1.QuiesceRequest) (*agentv1.QuiesceResponse, error) {
	if a.cfg.WritableMount == "" {
		return nil, status.Error(codes.FailedPrecondition, "no writable filesystem to freeze (the box's writable layer is in memory)")
	}
	lease := req.GetLease().AsDuration()
	switch {
	case req.GetLease() != nil && req.GetLease().CheckValid() != nil, lease < 0:
		return nil, status.Errorf(codes.InvalidArgument, "quiesce: lease %s is not a valid duration", req.GetLease())
	case lease > MaxFreezeLease:
		return nil, status.Errorf(codes.InvalidArgument, "quiesce: lease %s is longer than the %s allowed: ask for less and renew it with another Quiesce", lease, MaxFreezeLease)
	case lease == 0:
		lease = DefaultFreezeLease
	}
	f := &a.freeze
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.frozen {
		a.armLease(lease)
		a.log.Debug("freeze lease renewed", "lease", lease)
		return &agentv1.QuiesceResponse{Renewed: true, Lease: durationpb.New(lease)}, nil
	}
	start := time.Now()
	if err := a.freezeIoctl(true); err != nil {
		return nil, err
	}
	f.frozen, f.since, f.hasExpired = true, time.Now(), false
	a.armLease(lease)
	took := f.since.Sub(start)
	a.log.Debug("filesystem frozen", "mount", a.cfg.WritableMount, "sync", took, "lease", lease)
	return &agentv1.QuiesceResponse{Sync: durationpb.New(took), Lease: durationpb.New(lease)}, nil
}

// armLease (re)starts the lease timer of the current freeze. The caller holds freeze.mu.
func (a *Agent) armLease(lease time.Duration) {
	f := &a.freeze
	if f.timer != nil {
		f.timer.Stop()
	}
	f.gen++
	gen := f.gen
	f.timer = time.AfterFunc(lease, func() { a.leaseEnded(gen, lease) })
}

// leaseEnded thaws a freeze whose lease ran out.
func (a *Agent) leaseEnded(gen uint64, lease time.Duration) {
	f := &a.freeze
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.frozen || f.gen != gen {
		return
	}
	if err := a.freezeIoctl(false); err != nil {
		// Still frozen: try again shortly rather than leave the guest frozen for good.
		a.log.Error("thaw at the end of a freeze lease failed; retrying", "err", err)
		f.timer = time.AfterFunc(100*time.Millisecond, func() { a.leaseEnded(gen, lease) })
		return
	}
	f.frozen = false
	f.expired, f.hasExpired = time.Since(f.since), true
	f.timer = nil
	a.log.Warn("freeze lease expired without a thaw from the host: filesystem thawed", "mount", a.cfg.WritableMount, "lease", lease, "frozen", f.expired)
}

// Thaw implements agentv1.AgentServer.
func (a *Agent) Thaw(ctx context.Context, _ *agentv1.ThawRequest) (*agentv1.ThawResponse, error) {
	if a.cfg.WritableMount == "" {
		return nil, status.Error(codes.FailedPrecondition, "no writable filesystem to thaw (the box's writable layer is in memory)")
	}
	f := &a.freeze
	f.mu.Lock()
	defer f.mu.Unlock()
	return a.thawLocked()
}

func (a *Agent) thawLocked() (*agentv1.ThawResponse, error) {
	f := &a.freeze
	// FITHAW also when this agent did not freeze: whoever froze the filesystem, a Thaw must
	// leave it thawed.
	if err := a.freezeIoctl(false); err != nil {
		return nil, err
	}
	resp := &agentv1.ThawResponse{}
	switch {
	case f.frozen:
		if f.timer != nil {
			f.timer.Stop()
			f.timer = nil
		}
		f.gen++
		f.frozen = false
		resp.Frozen = durationpb.New(time.Since(f.since))
		a.log.Debug("filesystem thawed", "mount", a.cfg.WritableMount, "frozen", resp.Frozen.AsDuration())
	case f.hasExpired:
		resp.Frozen, resp.LeaseExpired = durationpb.New(f.expired), true
		f.hasExpired = false
	}
	return resp, nil
}

// thawForShutdown ends a freeze before the shutdown syncs: a sync of a frozen filesystem
// would wait for the lease.
func (a *Agent) thawForShutdown() {
	if a.cfg.WritableMount == "" {
		return
	}
	f := &a.freeze
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.frozen {
		if _, err := a.thawLocked(); err != nil {
			a.log.Warn("thaw before shutdown", "err", err)
		}
	}
}

// freezeIoctl freezes (FIFREEZE, which syncs the filesystem first) or thaws the writable
// filesystem. Freezing a frozen filesystem and thawing a thawed one succeed.
func (a *Agent) freezeIoctl(freeze bool) error {
	fd, err := unix.Open(a.cfg.WritableMount, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return status.Errorf(codes.Internal, "open %s: %v", a.cfg.WritableMount, err)
	}
	defer unix.Close(fd)
	op := "thaw"
	if freeze {
		op = "freeze"
		// EBUSY: already frozen.
		err = unix.IoctlSetInt(fd, fiFreeze, 0)
		if errors.Is(err, unix.EBUSY) {
			err = nil
		}
	} else {
		// EINVAL: not frozen.
		err = unix.IoctlSetInt(fd, fiThaw, 0)
		if errors.Is(err, unix.EINVAL) {
			err = nil
		}
	}
	if err != nil {
		code := codes.Internal
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY) {
			code = codes.FailedPrecondition
		}
		return status.Errorf(code, "%s %s: %v", op, a.cfg.WritableMount, err)
	}
	return nil
}
