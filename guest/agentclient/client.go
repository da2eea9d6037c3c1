// Package agentclient is the host's client for the guest agent (boxctl.agent.v1): it dials
// the unix socket that reaches a box's agent (agentmux's agent.sock for QEMU, libkrun's vsock
// socket) and wraps the gRPC calls in plain Go types for the core.
package agentclient

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/boxctl/boxctl/guest/proto/agentv1"
	"github.com/boxctl/boxctl/sdk/guestboot"
)

var (
	// ErrRootNotMounted means the agent is up but could not mount the box root; the error
	// text says why. Waiting longer does not help.
	ErrRootNotMounted = errors.New("guest agent could not mount the box root")
	// ErrProtocol means the agent broke the protocol (for example an Exec stream that ended
	// without an exit status).
	ErrProtocol = errors.New("guest agent protocol error")
)

// Client talks to one guest agent. It is safe for concurrent use.
type Client struct {
	conn *grpc.ClientConn
	api  agentv1.AgentClient
}

// Dial prepares a client for the agent behind the unix socket socketPath. It does not wait
// for the agent. Calls fail fast when the socket is gone (a box that stopped must not make a
// call wait for it); WaitReady is the one call that waits for a booting guest.
func Dial(ctx context.Context, socketPath string) (*Client, error) {
	if socketPath == "" {
		return nil, errors.New("agentclient: empty socket path")
	}
	dialer := func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socketPath)
	}
	conn, err := grpc.NewClient("passthrough:///boxctl-agent",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dialer),
		// A booting guest: retry connecting quickly rather than with gRPC's default backoff
		// of up to two minutes.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 500 * time.Millisecond},
			MinConnectTimeout: 60 * time.Second,
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("agentclient: %w", err)
	}
	return &Client{conn: conn, api: agentv1.NewAgentClient(conn)}, nil
}

// Close closes the connection; calls in flight fail.
func (c *Client) Close() error { return c.conn.Close() }

// API returns the raw gRPC client for calls this package does not wrap.
func (c *Client) API() agentv1.AgentClient { return c.api }

// Info is what Ping reports.
type Info struct {
	AgentVersion    string
	ProtocolVersion uint32
	KernelRelease   string
	Uptime          time.Duration
	BootTime        time.Time
	RootMounted     bool
	RootError       string
	// BoxID is the box the guest says it is: from its kernel command line at boot, from the
	// last Reidentify after a restore. Empty from an agent older than protocol 3, or when
	// neither gave one.
	BoxID string
}

// Ping asks the agent who it is.
func (c *Client) Ping(ctx context.Context) (*Info, error) {
	return c.ping(ctx)
}

func (c *Client) ping(ctx context.Context, opts ...grpc.CallOption) (*Info, error) {
	r, err := c.api.Ping(ctx, &agentv1.PingRequest{}, opts...)
	if err != nil {
		return nil, fmt.Errorf("ping guest agent: %w", err)
	}
	info := &Info{
		AgentVersion:    r.GetAgentVersion(),
		ProtocolVersion: r.GetProtocolVersion(),
		KernelRelease:   r.GetKernelRelease(),
		Uptime:          r.GetUptime().AsDuration(),
		RootMounted:     r.GetRootMounted(),
		RootError:       r.GetRootError(),
		BoxID:           r.GetBoxId(),
	}
	if r.GetBootTime() != nil {
		info.BootTime = r.GetBootTime().AsTime()
	}
	return info, nil
}

// WaitReady waits until the agent answers Ping and has the box root mounted. It fails at once
// with ErrRootNotMounted if the agent reports that mounting failed, and with ctx's error if
// the agent does not answer in time.
func (c *Client) WaitReady(ctx context.Context) (*Info, error) {
	for {
		// Short attempts: a connection that went stale while the guest booted is replaced.
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := c.ping(actx, grpc.WaitForReady(true))
		cancel()
		if err == nil {
			if info.RootMounted {
				return info, nil
			}
			if info.RootError != "" {
				return info, fmt.Errorf("%w: %s", ErrRootNotMounted, info.RootError)
			}
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = errors.New("box root not mounted yet")
			}
			return nil, fmt.Errorf("guest agent not ready: %w (last: %v)", ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Shutdown asks the guest to stop its processes (SIGTERM, SIGKILL after grace; 0 means the
// agent's default of 2s), sync and unmount its disks, and power off. When it returns nil the
// box's disks are consistent; the VM exits shortly after.
func (c *Client) Shutdown(ctx context.Context, grace time.Duration) error {
	req := &agentv1.ShutdownRequest{}
	if grace > 0 {
		req.Grace = durationpb.New(grace)
	}
	if _, err := c.api.Shutdown(ctx, req); err != nil {
		return fmt.Errorf("guest shutdown: %w", err)
	}
	return nil
}

// Frozen is what Quiesce reports.
type Frozen struct {
	// Sync is how long the guest took to sync and freeze (zero when the call renewed a
	// freeze).
	Sync time.Duration
	// Renewed says the filesystem was frozen already and the call renewed its lease.
	Renewed bool
	// Lease is the lease now in force: the guest thaws by itself when it ends without a
	// Thaw or another Quiesce. Zero from an agent of protocol 1, which has no leases.
	Lease time.Duration
}

// Thawed is what Thaw reports.
type Thawed struct {
	// Frozen is how long the filesystem was frozen (guest time); zero if it was not.
	Frozen time.Duration
	// LeaseExpired says the lease ran out before Thaw and the guest had thawed by itself:
	// work done after Frozen had passed saw a live filesystem.
	LeaseExpired bool
}

// Quiesce syncs and freezes the box's writable filesystem for at most lease (0: the agent's
// default of 10s; at most 60s), or renews the lease of the current freeze. Always pair with
// Thaw.
func (c *Client) Quiesce(ctx context.Context, lease time.Duration) (Frozen, error) {
	req := &agentv1.QuiesceRequest{}
	if lease > 0 {
		req.Lease = durationpb.New(lease)
	}
	r, err := c.api.Quiesce(ctx, req)
	if err != nil {
		return Frozen{}, fmt.Errorf("guest quiesce: %w", err)
	}
	return Frozen{Sync: r.GetSync().AsDuration(), Renewed: r.GetRenewed(), Lease: r.GetLease().AsDuration()}, nil
}

// Thaw undoes Quiesce. Idempotent.
func (c *Client) Thaw(ctx context.Context) (Thawed, error) {
	r, err := c.api.Thaw(ctx, &agentv1.ThawRequest{})
	if err != nil {
		return Thawed{}, fmt.Errorf("guest thaw: %w", err)
	}
	return Thawed{Frozen: r.GetFrozen().AsDuration(), LeaseExpired: r.GetLeaseExpired()}, nil
}

// Diff writes the box's changes against its image to w as an uncompressed OCI layer tar
// (whiteouts for deletions) and returns how many bytes it wrote. Take it between Quiesce and
// Thaw for a consistent layer. The guest is not trusted: validate the tar before using it.
// An agent older than protocol 2 fails with codes.Unimplemented.
func (c *Client) Diff(ctx context.Context, w io.Writer) (int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.api.Diff(ctx, &agentv1.DiffRequest{})
	if err != nil {
		return 0, fmt.Errorf("diff: %w", err)
	}
	var n int64
	for {
		msg, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("diff: %w", err)
		}
		k, err := w.Write(msg.GetData())
		n += int64(k)
		if err != nil {
			return n, fmt.Errorf("diff: write: %w", err)
		}
	}
}

// Stats is guest resource usage.
type Stats struct {
	CPU                  CPUTimes
	NumCPUs              int
	MemoryTotalBytes     uint64
	MemoryFreeBytes      uint64
	MemoryAvailableBytes uint64
	Load1, Load5, Load15 float64
	Processes            int
	Uptime               time.Duration
}

// CPUTimes are cumulative CPU times of all guest CPUs since boot.
type CPUTimes struct {
	User, Nice, System, Idle, IOWait, IRQ, SoftIRQ, Steal time.Duration
}

// Stats reports guest resource usage.
func (c *Client) Stats(ctx context.Context) (*Stats, error) {
	r, err := c.api.Stats(ctx, &agentv1.StatsRequest{})
	if err != nil {
		return nil, fmt.Errorf("guest stats: %w", err)
	}
	cpu := r.GetCpu()
	return &Stats{
		CPU: CPUTimes{
			User: cpu.GetUser().AsDuration(), Nice: cpu.GetNice().AsDuration(),
			System: cpu.GetSystem().AsDuration(), Idle: cpu.GetIdle().AsDuration(),
			IOWait: cpu.GetIowait().AsDuration(), IRQ: cpu.GetIrq().AsDuration(),
			SoftIRQ: cpu.GetSoftirq().AsDuration(), Steal: cpu.GetSteal().AsDuration(),
		},
		NumCPUs:              int(r.GetNumCpus()),
		MemoryTotalBytes:     r.GetMemoryTotalBytes(),
		MemoryFreeBytes:      r.GetMemoryFreeBytes(),
		MemoryAvailableBytes: r.GetMemoryAvailableBytes(),
		Load1:                r.GetLoad1(), Load5: r.GetLoad5(), Load15: r.GetLoad15(),
		Processes: int(r.GetProcesses()),
		Uptime:    r.GetUptime().AsDuration(),
	}, nil
}

// UploadOptions control Upload.
type UploadOptions struct {
	// Overwrite replaces existing non-directories.
	Overwrite bool
	// PreserveOwner applies the tar's uid/gid (otherwise files belong to root).
	PreserveOwner bool
}

// UploadResult is what the agent extracted.
type UploadResult struct {
	Entries uint64
	Bytes   uint64
}

// Upload extracts the tar stream r into destDir (a path in the box, created if missing).
// Entries escaping destDir make it fail with codes.InvalidArgument (see IsEscape).
func (c *Client) Upload(ctx context.Context, destDir string, r io.Reader, opts UploadOptions) (UploadResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.api.Upload(ctx)
	if err != nil {
		return UploadResult{}, fmt.Errorf("upload to %s: %w", destDir, err)
	}
	hdr := &agentv1.UploadHeader{DestDir: destDir, Overwrite: opts.Overwrite, PreserveOwner: opts.PreserveOwner}
	if err := st.Send(&agentv1.UploadRequest{Msg: &agentv1.UploadRequest_Header{Header: hdr}}); err != nil {
		return UploadResult{}, c.uploadErr(st, destDir, err)
	}
	buf := make([]byte, 64<<10)
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			if err := st.Send(&agentv1.UploadRequest{Msg: &agentv1.UploadRequest_Data{Data: buf[:n]}}); err != nil {
				// The agent stopped reading (it refused an entry): its status says why.
				return UploadResult{}, c.uploadErr(st, destDir, err)
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return UploadResult{}, fmt.Errorf("upload to %s: read tar: %w", destDir, rerr)
		}
	}
	resp, err := st.CloseAndRecv()
	if err != nil {
		return UploadResult{}, fmt.Errorf("upload to %s: %w", destDir, err)
	}
	return UploadResult{Entries: resp.GetEntries(), Bytes: resp.GetBytes()}, nil
}

func (c *Client) uploadErr(st agentv1.Agent_UploadClient, destDir string, sendErr error) error {
	if errors.Is(sendErr, io.EOF) {
		_, err := st.CloseAndRecv()
		if err != nil {
			return fmt.Errorf("upload to %s: %w", destDir, err)
		}
	}
	return fmt.Errorf("upload to %s: %w", destDir, sendErr)
}

// IsEscape reports whether err is the agent refusing a tar entry that escapes the
// destination (or is otherwise invalid: codes.InvalidArgument). Errors of this package wrap
// gRPC status errors, so status.Code(err) gives the code of any of them.
func IsEscape(err error) bool { return status.Code(err) == codes.InvalidArgument }

// IsUnimplemented reports whether err is the agent not knowing the call: an agent older
// than the protocol version the call needs (Reidentify: 3, Diff: 2).
func IsUnimplemented(err error) bool { return status.Code(err) == codes.Unimplemented }

// IsNotFound reports whether err is the agent saying a path does not exist.
func IsNotFound(err error) bool { return status.Code(err) == codes.NotFound }

// DownloadOptions control Download.
type DownloadOptions struct {
	// FollowSymlinks archives what symlinks point to (inside the box).
	FollowSymlinks bool
	// IncludeParent names entries starting with the path's last element.
	IncludeParent bool
}

// Download writes a tar of path (in the box) to w. Extract it on the host with
// tarsafe.Extract, never with a plain tar reader: the guest is not trusted.
func (c *Client) Download(ctx context.Context, path string, w io.Writer, opts DownloadOptions) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.api.Download(ctx, &agentv1.DownloadRequest{
		Path: path, FollowSymlinks: opts.FollowSymlinks, IncludeParent: opts.IncludeParent,
	})
	if err != nil {
		return fmt.Errorf("download %s: %w", path, err)
	}
	for {
		msg, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("download %s: %w", path, err)
		}
		if _, err := w.Write(msg.GetData()); err != nil {
			return fmt.Errorf("download %s: write: %w", path, err)
		}
	}
}

// Size is a terminal size.
type Size struct {
	Rows, Cols uint16
}

// ExecRequest is a process to run in the box. The caller resolves image defaults and box
// overrides; the agent only adds PATH, HOME and (with a TTY) TERM when missing.
type ExecRequest struct {
	Argv       []string
	Env        []string // KEY=VALUE
	WorkingDir string   // "/" if empty
	User       string   // "name", "uid", "uid:gid", "name:group"; root if empty
	// TTY allocates a terminal of this size; stdout and stderr are then one stream (stdout).
	TTY *Size
	// Timeout kills the process group (SIGTERM, then SIGKILL after KillGrace) when it runs
	// longer; zero means none.
	Timeout   time.Duration
	KillGrace time.Duration
	// Detach runs the process in the background: Exec returns once it has
	// started (ExitResult.PID set), its output goes to the guest console,
	// and it keeps running. It excludes TTY, stdin and Timeout.
	Detach bool
}

// ExitResult is how a process ended.
type ExitResult struct {
	// ExitCode is the exit status, 128+signal if killed by a signal, 127 if the program was
	// not found and 126 if it could not be executed.
	ExitCode int
	// Signal killed the process (0 if it exited).
	Signal int
	// TimedOut says the process was killed because ExecRequest.Timeout elapsed.
	TimedOut bool
	// Duration is how long it ran, measured in the guest.
	Duration time.Duration
	// PID is the process's PID in the guest (0 if it never started).
	PID int
}

// Exec runs a process in the box and streams its I/O: stdin (nil: the process gets
// /dev/null, or with a TTY no input) is copied to the process and closed at EOF; output goes
// to stdout and stderr (nil discards); sizes from resize are applied to the TTY; signal
// numbers from signals are delivered to the process. It returns when the process has exited
// and its output is written. Cancelling ctx kills the process.
//
// A stdin reader that blocks forever (a terminal) is left blocked in its Read after Exec
// returns; close it to release that goroutine.
func (c *Client) Exec(ctx context.Context, req ExecRequest, stdin io.Reader, stdout, stderr io.Writer,
	resize <-chan Size, signals <-chan int) (ExitResult, error) {
	if len(req.Argv) == 0 {
		return ExitResult{}, errors.New("exec: empty argv")
	}
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.api.Exec(ctx)
	if err != nil {
		return ExitResult{}, fmt.Errorf("exec %s: %w", req.Argv[0], err)
	}
	start := &agentv1.ExecStart{
		Argv: req.Argv, Env: req.Env, WorkingDir: req.WorkingDir, User: req.User,
		Stdin: stdin != nil, Detach: req.Detach,
	}
	if req.TTY != nil {
		start.Tty = &agentv1.TerminalSize{Rows: uint32(req.TTY.Rows), Cols: uint32(req.TTY.Cols)}
	}
	if req.Timeout > 0 {
		start.Timeout = durationpb.New(req.Timeout)
	}
	if req.KillGrace > 0 {
		start.KillGrace = durationpb.New(req.KillGrace)
	}
	var sendMu sync.Mutex
	send := func(m *agentv1.ExecRequest) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return st.Send(m)
	}
	if err := send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: start}}); err != nil {
		return ExitResult{}, c.execErr(st, req, err)
	}

	done := make(chan struct{})
	defer close(done)
	if stdin != nil {
		go func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := stdin.Read(buf)
				if n > 0 {
					if send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Stdin{Stdin: append([]byte(nil), buf[:n]...)}}) != nil {
						return
					}
				}
				if err != nil {
					_ = send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_StdinClose{StdinClose: true}})
					return
				}
				select {
				case <-done:
					return
				default:
				}
			}
		}()
	}
	if resize != nil || signals != nil {
		go func() {
			for {
				select {
				case <-done:
					return
				case sz, ok := <-resize:
					if !ok {
						resize = nil
						continue
					}
					_ = send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Resize{Resize: &agentv1.TerminalSize{Rows: uint32(sz.Rows), Cols: uint32(sz.Cols)}}})
				case sig, ok := <-signals:
					if !ok {
						signals = nil
						continue
					}
					_ = send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Signal{Signal: int32(sig)}})
				}
			}
		}()
	}

	var res ExitResult
	var exit *agentv1.ExecExit
	for {
		msg, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return res, fmt.Errorf("exec %s: %w", req.Argv[0], err)
		}
		switch m := msg.GetMsg().(type) {
		case *agentv1.ExecResponse_Started:
			res.PID = int(m.Started.GetPid())
		case *agentv1.ExecResponse_Stdout:
			if _, err := stdout.Write(m.Stdout); err != nil {
				return res, fmt.Errorf("exec %s: write stdout: %w", req.Argv[0], err)
			}
		case *agentv1.ExecResponse_Stderr:
			if _, err := stderr.Write(m.Stderr); err != nil {
				return res, fmt.Errorf("exec %s: write stderr: %w", req.Argv[0], err)
			}
		case *agentv1.ExecResponse_Exit:
			exit = m.Exit
		}
	}
	if req.Detach && res.PID != 0 {
		return res, nil // it runs on in the background
	}
	if exit == nil {
		return res, fmt.Errorf("exec %s: %w: stream ended without an exit status", req.Argv[0], ErrProtocol)
	}
	res.ExitCode = int(exit.GetExitCode())
	res.Signal = int(exit.GetSignal())
	res.TimedOut = exit.GetTimedOut()
	res.Duration = exit.GetDuration().AsDuration()
	return res, nil
}

func (c *Client) execErr(st agentv1.Agent_ExecClient, req ExecRequest, sendErr error) error {
	if errors.Is(sendErr, io.EOF) {
		if _, err := st.Recv(); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("exec %s: %w", req.Argv[0], err)
		}
	}
	return fmt.Errorf("exec %s: %w", req.Argv[0], sendErr)
}

// Identity is who a guest restored from a memory snapshot is now.
type Identity struct {
	// BoxID is the box's ID (lowercase letters and digits, at most 64).
	BoxID string
	// Hostname is the guest's host name (RFC 1123, at most 64 characters).
	Hostname string
	// Now is the time the guest's clock is set to; time.Now() when zero.
	Now time.Time
	// Entropy is mixed into the guest kernel's random pool (32 to 512 bytes); 64 bytes from
	// crypto/rand when empty.
	Entropy []byte
}

// Reidentified is what the guest did for Reidentify, for the host's log.
type Reidentified struct {
	// ClockStep is how far the guest's clock moved (positive: it was behind).
	ClockStep time.Duration
	// EntropyBits is what the guest credited to its random pool.
	EntropyBits int
	// PreviousHostname and PreviousBoxID are the guest's identity before the call.
	PreviousHostname, PreviousBoxID string
	// NetworkReapplied says the guest re-applied its network configuration.
	NetworkReapplied bool
	// Warnings are steps that failed without failing the call.
	Warnings []string
}

// defaultEntropy is how many random bytes Reidentify sends when Identity.Entropy is empty:
// twice the CRNG's 256-bit key.
const defaultEntropy = 64

// Reidentify tells a guest restored from a memory snapshot who it is now: the guest reseeds
// its random generator with fresh entropy, sets its clock, host name, /etc/hostname and
// /etc/hosts, re-applies its network, and reports id.BoxID in Ping. Idempotent. An agent
// older than protocol 3 fails with an error for which IsUnimplemented is true (status code
// Unimplemented): such a guest cannot be made distinct, so it must not be restored twice.
func (c *Client) Reidentify(ctx context.Context, id Identity) error {
	_, err := c.ReidentifyReport(ctx, id)
	return err
}

// ReidentifyReport is Reidentify, also returning what the guest did.
func (c *Client) ReidentifyReport(ctx context.Context, id Identity) (Reidentified, error) {
	if err := guestboot.ValidBoxID(id.BoxID); err != nil {
		return Reidentified{}, fmt.Errorf("reidentify guest: %w", err)
	}
	if err := guestboot.ValidHostname(id.Hostname); err != nil {
		return Reidentified{}, fmt.Errorf("reidentify guest %s: %w", id.BoxID, err)
	}
	entropy := id.Entropy
	if len(entropy) == 0 {
		entropy = make([]byte, defaultEntropy)
		if _, err := rand.Read(entropy); err != nil {
			return Reidentified{}, fmt.Errorf("reidentify guest %s: host entropy: %w", id.BoxID, err)
		}
	}
	now := id.Now
	if now.IsZero() {
		now = time.Now()
	}
	r, err := c.api.Reidentify(ctx, &agentv1.ReidentifyRequest{
		BoxId: id.BoxID, Hostname: id.Hostname, Now: timestamppb.New(now), Entropy: entropy,
	})
	if err != nil {
		return Reidentified{}, fmt.Errorf("reidentify guest as box %s: %w", id.BoxID, err)
	}
	return Reidentified{
		ClockStep:        r.GetClockStep().AsDuration(),
		EntropyBits:      int(r.GetEntropyBits()),
		PreviousHostname: r.GetPreviousHostname(),
		PreviousBoxID:    r.GetPreviousBoxId(),
		NetworkReapplied: r.GetNetworkReapplied(),
		Warnings:         r.GetWarnings(),
	}, nil
}
