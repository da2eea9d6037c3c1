// Package agent is the boxctl guest agent: the gRPC service (boxctl.agent.v1.Agent) that runs
// commands in a box and moves files in and out of it, and the PID 1 duties around it inside
// the VM (mounts, kernel modules, the box root overlay, reaping, power-off; see Main).
//
// The service itself (Agent) has no PID 1 assumptions: it works on any root directory, which
// is how its unit tests run on the host.
package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/boxctl/boxctl/guest/proto/agentv1"
	"github.com/boxctl/boxctl/guest/tarsafe"
)

// ProtocolVersion is the agent protocol version within boxctl.agent.v1.
const ProtocolVersion = 3

// DefaultPath is the PATH commands get when their environment has none.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// RootState says whether the box root is usable.
type RootState struct {
	Mounted bool
	// Err says why mounting failed, when it did.
	Err error
}

// Config configures an Agent.
type Config struct {
	// Root is the box root directory commands run in (chrooted, unless it is "/").
	Root string
	// RootState reports whether Root is ready; nil means always ready.
	RootState func() RootState
	// WritableMount is the mount point of the box's writable filesystem, frozen by Quiesce.
	// Empty makes Quiesce and Thaw fail with FailedPrecondition.
	WritableMount string
	// UpperDir is the overlay upper directory of the box root (the box's changes), which
	// Diff archives. Empty makes Diff fail with FailedPrecondition.
	UpperDir string
	// Generated lists the paths inside the box root the agent mounts files of its own onto
	// (/etc/hostname, ...): Diff leaves them out, since they are the runtime's, not the box's.
	Generated []string
	// Version is reported by Ping.
	Version string
	// Logger receives the agent's log; nil discards it.
	Logger *slog.Logger
	// Reaper starts and reaps processes; nil means NewReaper(false).
	Reaper *Reaper
	// Shutdown does the work of the Shutdown call before it replies (stop processes, sync,
	// unmount) and returns a function to run after the reply was sent (power off). Nil makes
	// Shutdown fail with Unimplemented.
	Shutdown func(ctx context.Context, grace time.Duration) (after func(), err error)
	// OutputDrain is how long output is still forwarded after the process exited while some
	// other process (a background child) keeps its stdout/stderr open; 1s if zero.
	OutputDrain time.Duration
	// Console receives the output of detached processes; /dev/console if empty.
	Console string
	// BoxID is the box's ID at boot (the kernel command line's), which Ping reports until a
	// Reidentify gives another.
	BoxID string
	// Reidentify applies a validated new identity to the guest (random pool, clock, host
	// name, network) for the Reidentify call. Nil makes Reidentify fail with Unimplemented.
	Reidentify func(ctx context.Context, id Identity) (Reidentified, error)
}

// Agent implements agentv1.AgentServer.
type Agent struct {
	agentv1.UnimplementedAgentServer

	cfg    Config
	log    *slog.Logger
	reaper *Reaper

	shutdownMu sync.Mutex
	shutDown   bool

	freeze freezeState

	reidentifyMu sync.Mutex // serialises Reidentify calls
	idMu         sync.Mutex
	boxID        string
}

// New returns an Agent for cfg.
func New(cfg Config) *Agent {
	if cfg.Root == "" {
		cfg.Root = "/"
	}
	if cfg.OutputDrain == 0 {
		cfg.OutputDrain = time.Second
	}
	if cfg.Console == "" {
		cfg.Console = "/dev/console"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	r := cfg.Reaper
	if r == nil {
		r = NewReaper(false)
	}
	return &Agent{cfg: cfg, log: log, reaper: r, boxID: cfg.BoxID}
}

// Register registers the Agent service on s.
func (a *Agent) Register(s *grpc.Server) { agentv1.RegisterAgentServer(s, a) }

func (a *Agent) rootState() RootState {
	if a.cfg.RootState == nil {
		return RootState{Mounted: true}
	}
	return a.cfg.RootState()
}

// requireRoot fails calls that need the box root while it is not mounted.
func (a *Agent) requireRoot() error {
	st := a.rootState()
	if st.Mounted {
		return nil
	}
	msg := "box root is not mounted"
	if st.Err != nil {
		msg += ": " + st.Err.Error()
	}
	return status.Error(codes.FailedPrecondition, msg)
}

// Ping implements agentv1.AgentServer.
func (a *Agent) Ping(ctx context.Context, _ *agentv1.PingRequest) (*agentv1.PingResponse, error) {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	resp := &agentv1.PingResponse{
		AgentVersion:    a.cfg.Version,
		ProtocolVersion: ProtocolVersion,
		KernelRelease:   unix.ByteSliceToString(uts.Release[:]),
		BoxId:           a.BoxID(),
	}
	if up, err := readUptime(); err == nil {
		resp.Uptime = durationpb.New(up)
	}
	if bt, err := readBootTime(); err == nil {
		resp.BootTime = timestamppb.New(bt)
	}
	st := a.rootState()
	resp.RootMounted = st.Mounted
	if st.Err != nil {
		resp.RootError = st.Err.Error()
	}
	return resp, nil
}

// Shutdown implements agentv1.AgentServer.
func (a *Agent) Shutdown(ctx context.Context, req *agentv1.ShutdownRequest) (*agentv1.ShutdownResponse, error) {
	if a.cfg.Shutdown == nil {
		return nil, status.Error(codes.Unimplemented, "shutdown is not available in this agent")
	}
	a.shutdownMu.Lock()
	defer a.shutdownMu.Unlock()
	if a.shutDown {
		return &agentv1.ShutdownResponse{}, nil
	}
	grace := req.GetGrace().AsDuration()
	if grace <= 0 {
		grace = 2 * time.Second
	}
	a.log.Info("shutdown requested", "grace", grace)
	a.thawForShutdown()
	after, err := a.cfg.Shutdown(ctx, grace)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "shutdown: %v", err)
	}
	a.shutDown = true
	if after != nil {
		// The reply must reach the host before the VM disappears.
		go func() {
			time.Sleep(100 * time.Millisecond)
			after()
		}()
	}
	return &agentv1.ShutdownResponse{}, nil
}

// Stats implements agentv1.AgentServer.
func (a *Agent) Stats(ctx context.Context, _ *agentv1.StatsRequest) (*agentv1.StatsResponse, error) {
	st, err := readStats()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "stats: %v", err)
	}
	return st, nil
}

// Upload implements agentv1.AgentServer.
func (a *Agent) Upload(stream agentv1.Agent_UploadServer) error {
	if err := a.requireRoot(); err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "upload: read header: %v", err)
	}
	hdr := first.GetHeader()
	if hdr == nil || hdr.GetDestDir() == "" {
		return status.Error(codes.InvalidArgument, "upload: the first message must be a header with dest_dir")
	}
	r := &uploadReader{stream: stream}
	st, err := tarsafe.ExtractInRoot(stream.Context(), r, a.cfg.Root, hdr.GetDestDir(), tarsafe.ExtractOptions{
		Overwrite:     hdr.GetOverwrite(),
		PreserveOwner: hdr.GetPreserveOwner(),
	})
	if err != nil {
		if r.err != nil && !errors.Is(r.err, io.EOF) {
			return status.Errorf(codes.Canceled, "upload: receive: %v", r.err)
		}
		code := codes.Internal
		switch {
		case errors.Is(err, tarsafe.ErrEscape), errors.Is(err, tarsafe.ErrUnsupported), errors.Is(err, tarsafe.ErrInvalidTar):
			code = codes.InvalidArgument
		case errors.Is(err, tarsafe.ErrExists):
			code = codes.AlreadyExists
		}
		return status.Errorf(code, "upload to %s: %v", hdr.GetDestDir(), err)
	}
	// Drain anything after the tar's end-of-archive marker so the client's CloseSend lands.
	_, _ = io.Copy(io.Discard, r)
	a.log.Debug("upload", "dest", hdr.GetDestDir(), "entries", st.Entries, "bytes", st.Bytes)
	return stream.SendAndClose(&agentv1.UploadResponse{Entries: st.Entries, Bytes: st.Bytes})
}

// uploadReader turns the data messages of an Upload stream into a byte stream.
type uploadReader struct {
	stream agentv1.Agent_UploadServer
	buf    []byte
	err    error
}

func (u *uploadReader) Read(p []byte) (int, error) {
	for len(u.buf) == 0 {
		if u.err != nil {
			return 0, u.err
		}
		msg, err := u.stream.Recv()
		if err != nil {
			u.err = err
			return 0, err
		}
		if msg.GetHeader() != nil {
			u.err = errors.New("unexpected second upload header")
			return 0, u.err
		}
		u.buf = msg.GetData()
	}
	n := copy(p, u.buf)
	u.buf = u.buf[n:]
	return n, nil
}

// Download implements agentv1.AgentServer.
func (a *Agent) Download(req *agentv1.DownloadRequest, stream agentv1.Agent_DownloadServer) error {
	if err := a.requireRoot(); err != nil {
		return err
	}
	if req.GetPath() == "" {
		return status.Error(codes.InvalidArgument, "download: path is required")
	}
	w := &chunkWriter{send: func(b []byte) error {
		return stream.Send(&agentv1.DownloadResponse{Data: b})
	}, buf: make([]byte, 0, chunkSize)}
	err := tarsafe.Archive(stream.Context(), w, a.cfg.Root, req.GetPath(), tarsafe.ArchiveOptions{
		FollowSymlinks: req.GetFollowSymlinks(),
		IncludeParent:  req.GetIncludeParent(),
	})
	if err == nil {
		err = w.flush()
	}
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && w.sent == 0 {
			return status.Errorf(codes.NotFound, "download: %s does not exist in the box", path.Clean("/"+req.GetPath()))
		}
		if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
			return err
		}
		return status.Errorf(codes.Internal, "download %s: %v", req.GetPath(), err)
	}
	return nil
}

const chunkSize = 64 << 10

// diffChunkSize is the message size of Diff streams, which are large: fewer, bigger
// messages move more bytes per second over the serial channel.
const diffChunkSize = 1 << 20

// chunkWriter batches writes into messages of up to size bytes (chunkSize if zero).
type chunkWriter struct {
	send func([]byte) error
	buf  []byte
	size int
	sent int
}

func (c *chunkWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		size := c.size
		if size == 0 {
			size = chunkSize
		}
		k := min(len(p), size-len(c.buf))
		c.buf = append(c.buf, p[:k]...)
		p = p[k:]
		n += k
		if len(c.buf) == size {
			if err := c.flush(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

func (c *chunkWriter) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	if err := c.send(c.buf); err != nil {
		return err
	}
	c.sent += len(c.buf)
	// A new buffer: gRPC may still hold the one just sent.
	c.buf = make([]byte, 0, cap(c.buf))
	return nil
}
