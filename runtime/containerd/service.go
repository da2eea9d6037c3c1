package containerd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"

	eventstypes "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/runtime"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
)

// Labels on the boxes the shim creates.
const (
	LabelNamespace = "containerd.namespace"
	LabelID        = "containerd.id"
	LabelBundle    = "containerd.bundle"
)

// imageDirName is where, in the bundle, the container's rootfs is written
// as an OCI layout for boxctl's image plugin.
const imageDirName = "boxctl-image"

// container is one task: its box and its processes.
type container struct {
	id      string
	bundle  string
	boxID   string
	image   string // the oci-layout reference the box was created from
	mounted bool   // rootfs mounts were mounted on bundle/rootfs by the shim
	init    *process

	mu    sync.Mutex
	execs map[string]*process
}

// service is the task API over boxes. One shim process serves one
// container (containerd starts a shim per container).
type service struct {
	// rt is opened by the first Create, with the config its runtime
	// options name.
	rt        *core.Runtime
	rtOpts    []core.Option
	namespace string
	events    shim.Publisher
	shutdown  shutdown.Service

	mu         sync.Mutex
	containers map[string]*container
}

func newService(rtOpts []core.Option, ns string, pub shim.Publisher, sd shutdown.Service) *service {
	s := &service{rtOpts: rtOpts, namespace: ns, events: pub, shutdown: sd, containers: map[string]*container{}}
	sd.RegisterCallback(func(context.Context) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.rt != nil {
			return s.rt.Close()
		}
		return nil
	})
	return s
}

// openRuntime opens package core for the container being created, once.
func (s *service) openRuntime(ctx context.Context, configPath, bundle string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rt != nil {
		return nil
	}
	rt, err := openRuntime(ctx, configPath, s.rtOpts)
	if err != nil {
		return err
	}
	if configPath != "" {
		if err := os.WriteFile(filepath.Join(bundle, configRecord), []byte(configPath), 0o600); err != nil {
			rt.Close()
			return fmt.Errorf("record the boxctl config in the bundle: %w", err)
		}
	}
	s.rt = rt
	return nil
}

// RegisterTTRPC serves task API v3 and, with the same handlers, v2: the
// two APIs have identical messages and differ only in the service name.
func (s *service) RegisterTTRPC(server *ttrpc.Server) error {
	taskapi.RegisterTTRPCTaskService(server, s)
	registerTaskV2(server, s)
	return nil
}

// UnaryServerInterceptor gives every error of the task API its gRPC code
// (not found, failed precondition...): containerd branches on those codes,
// e.g. a kill of a finished process must read as not found.
func (s *service) UnaryServerInterceptor() ttrpc.UnaryServerInterceptor {
	return func(ctx context.Context, u ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, h ttrpc.Method) (any, error) {
		resp, err := h(ctx, u)
		if err != nil {
			return resp, errgrpc.ToGRPC(err)
		}
		return resp, nil
	}
}

func (s *service) publish(ctx context.Context, topic string, ev any) {
	if s.events == nil {
		return
	}
	ctx = namespaces.WithNamespace(context.WithoutCancel(ctx), s.namespace)
	if err := s.events.Publish(ctx, topic, ev.(interface{ ProtoMessage() })); err != nil {
		log.G(ctx).WithError(err).Warn("publish event")
	}
}

func (s *service) get(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, fmt.Errorf("container %s: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

func (c *container) process(execID string) (*process, error) {
	if execID == "" {
		return c.init, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.execs[execID]
	if !ok {
		return nil, fmt.Errorf("exec %s in container %s: %w", execID, c.id, errdefs.ErrNotFound)
	}
	return p, nil
}

var nameUnsafe = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

// boxName is the box's name for a container: NAMESPACE.ID where that makes
// a valid box name; the labels are what the shim finds boxes by.
func boxName(ns, id string) string {
	n := nameUnsafe.ReplaceAllString(ns+"."+id, "-")
	if len(n) > 128 {
		n = n[:128]
	}
	return n
}

// Create makes the container's box: the bundle's rootfs becomes the box's
// root disk, the OCI spec its configuration. The box is created, not
// started: its VM boots on Start.
func (s *service) Create(ctx context.Context, r *taskapi.CreateTaskRequest) (_ *taskapi.CreateTaskResponse, err error) {
	s.mu.Lock()
	_, exists := s.containers[r.ID]
	s.mu.Unlock()
	if exists {
		return nil, fmt.Errorf("container %s: %w", r.ID, errdefs.ErrAlreadyExists)
	}
	spec, err := readSpec(r.Bundle)
	if err != nil {
		return nil, err
	}
	configPath, err := configFromOptions(r.Options, r.Bundle)
	if err != nil {
		return nil, err
	}
	if err := s.openRuntime(ctx, configPath, r.Bundle); err != nil {
		return nil, err
	}
	cfg, argv, files, unsupported, err := boxConfig(spec)
	if err != nil {
		return nil, err
	}
	for _, u := range unsupported {
		log.G(ctx).WithField("id", r.ID).Warnf("OCI spec field not honoured by boxctl: %s", u)
	}
	c := &container{id: r.ID, bundle: r.Bundle, execs: map[string]*process{}}
	defer func() {
		if err != nil {
			c.cleanupFiles(ctx)
		}
	}()
	rootfs := filepath.Join(r.Bundle, "rootfs")
	if spec.Root != nil && spec.Root.Path != "" {
		if filepath.IsAbs(spec.Root.Path) {
			rootfs = spec.Root.Path
		} else {
			rootfs = filepath.Join(r.Bundle, spec.Root.Path)
		}
	}
	if len(r.Rootfs) > 0 {
		if err := os.MkdirAll(rootfs, 0o711); err != nil {
			return nil, fmt.Errorf("create rootfs mount point: %w", err)
		}
		if err := mount.All(mount.FromProto(r.Rootfs), rootfs); err != nil {
			return nil, fmt.Errorf("mount the container's rootfs on %s: %w", rootfs, err)
		}
		c.mounted = true
	}
	layout := filepath.Join(r.Bundle, imageDirName)
	digest, err := writeLayout(rootfs, layout, files)
	if err != nil {
		return nil, err
	}
	c.image = "oci-layout:" + layout + "@" + digest
	img, err := s.rt.EnsureImage(ctx, c.image, "", nil)
	if err != nil {
		return nil, fmt.Errorf("import the container's rootfs into boxctl: %w", err)
	}
	// The image store holds the root disk now; the layout is not needed.
	_ = os.RemoveAll(layout)
	if c.mounted {
		if err := mount.UnmountAll(rootfs, 0); err == nil {
			c.mounted = false
		}
	}
	cfg.Image = c.image
	cfg.Labels = map[string]string{LabelNamespace: s.namespace, LabelID: r.ID, LabelBundle: r.Bundle}
	box, err := s.rt.Create(ctx, core.BoxOptions{Name: boxName(s.namespace, r.ID), Config: cfg})
	if err != nil {
		// Unless another box uses it, the image was made for this one.
		_, _ = s.rt.RemoveImage(ctx, img.Digest, false)
		return nil, mapErr(fmt.Errorf("create box for container %s: %w", r.ID, err))
	}
	c.boxID = box.ID()
	init := newProcess("")
	init.argv, init.env, init.cwd, init.user = argv, cfg.Env, cfg.WorkingDir, cfg.User
	init.terminal, init.stdin, init.stdout, init.stderr = r.Terminal, r.Stdin, r.Stdout, r.Stderr
	c.init = init
	s.mu.Lock()
	s.containers[r.ID] = c
	s.mu.Unlock()
	pid := s.vmPID(ctx, c)
	s.publish(ctx, runtime.TaskCreateEventTopic, &eventstypes.TaskCreate{
		ContainerID: r.ID, Bundle: r.Bundle, Rootfs: r.Rootfs,
		IO:         &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Checkpoint: r.Checkpoint, Pid: pid,
	})
	return &taskapi.CreateTaskResponse{Pid: pid}, nil
}

// vmPID is the task's PID as containerd sees it: the box's hypervisor
// process on the host (0 before it boots).
func (s *service) vmPID(ctx context.Context, c *container) uint32 {
	b, err := s.rt.GetInfo(ctx, c.boxID)
	if err != nil || b.Run == nil {
		return 0
	}
	return uint32(b.Run.VM.PID)
}

func readSpec(bundle string) (*specs.Spec, error) {
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("read the OCI spec of bundle %s: %w", bundle, err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("parse the OCI spec %s/config.json: %w", bundle, err)
	}
	return &spec, nil
}

// Start boots the box (init) or starts an exec in the running box.
func (s *service) Start(ctx context.Context, r *taskapi.StartRequest) (*taskapi.StartResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	p, err := c.process(r.ExecID)
	if err != nil {
		return nil, err
	}
	if started, _, _, _ := p.snapshot(); started {
		return nil, fmt.Errorf("%s already started: %w", processName(r.ID, r.ExecID), errdefs.ErrFailedPrecondition)
	}
	if r.ExecID == "" {
		// Detached: the box outlives this shim process (containerd may
		// restart shims' connections; cleanup is `shim delete`'s job).
		// Cold: a container's box makes no boot template to keep.
		if err := s.rt.Start(ctx, c.boxID, core.Detach(true), core.Cold()); err != nil {
			return nil, fmt.Errorf("start box of container %s: %w", r.ID, err)
		}
	}
	pid := s.vmPID(ctx, c)
	p.setPID(pid)
	if err := p.run(s.rt, c.boxID, func(p *process) { s.exited(c, p) }); err != nil {
		return nil, fmt.Errorf("start process of %s: %w", r.ID, err)
	}
	if r.ExecID == "" {
		s.publish(ctx, runtime.TaskStartEventTopic, &eventstypes.TaskStart{ContainerID: r.ID, Pid: pid})
	} else {
		s.publish(ctx, runtime.TaskExecStartedEventTopic, &eventstypes.TaskExecStarted{ContainerID: r.ID, ExecID: r.ExecID, Pid: pid})
	}
	return &taskapi.StartResponse{Pid: pid}, nil
}

func (s *service) exited(c *container, p *process) {
	_, _, status, at := p.snapshot()
	id := p.id
	if id == "" {
		id = c.id
	}
	s.publish(context.Background(), runtime.TaskExitEventTopic, &eventstypes.TaskExit{
		ContainerID: c.id, ID: id, Pid: p.getPID(), ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at),
	})
}

// Delete removes an exec's record, or the container: its box (killed if
// still running), the box's root disk image, and the rootfs mount.
func (s *service) Delete(ctx context.Context, r *taskapi.DeleteRequest) (*taskapi.DeleteResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	p, err := c.process(r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.ExecID != "" {
		if started, exited, _, _ := p.snapshot(); started && !exited {
			return nil, fmt.Errorf("exec %s of %s is running: %w", r.ExecID, r.ID, errdefs.ErrFailedPrecondition)
		}
		c.mu.Lock()
		delete(c.execs, r.ExecID)
		c.mu.Unlock()
		_, _, status, at := p.snapshot()
		return &taskapi.DeleteResponse{Pid: p.getPID(), ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)}, nil
	}
	if started, exited, _, _ := p.snapshot(); started && !exited {
		return nil, fmt.Errorf("container %s is running: kill it first: %w", r.ID, errdefs.ErrFailedPrecondition)
	}
	if err := removeBox(ctx, s.rt, c.boxID); err != nil {
		return nil, err
	}
	c.cleanupFiles(ctx)
	p.setExited(128 + uint32(syscall.SIGKILL)) // a created, never started init
	_, _, status, at := p.snapshot()
	s.mu.Lock()
	delete(s.containers, r.ID)
	s.mu.Unlock()
	s.publish(ctx, runtime.TaskDeleteEventTopic, &eventstypes.TaskDelete{
		ContainerID: r.ID, Pid: p.getPID(), ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at),
	})
	return &taskapi.DeleteResponse{Pid: p.getPID(), ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

// removeBox force-removes the box and then its root disk image, unless
// another box still uses that image (containers with identical rootfs
// trees share one): the last of them to go removes it.
func removeBox(ctx context.Context, rt *core.Runtime, boxID string) error {
	b, err := rt.GetInfo(ctx, boxID)
	if errors.Is(err, core.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("box %s: %w", boxID, err)
	}
	if err := rt.Remove(ctx, boxID, core.RemoveOptions{Force: true}); err != nil && !errors.Is(err, core.ErrNotFound) {
		return fmt.Errorf("remove box %s: %w", boxID, err)
	}
	if b.ImageDigest != "" {
		if _, err := rt.RemoveImage(ctx, b.ImageDigest, false); err != nil && !errors.Is(err, core.ErrNotFound) && !errors.Is(err, core.ErrInvalidState) {
			log.G(ctx).WithError(err).Warn("remove the container's root disk image")
		}
	}
	return nil
}

func (c *container) cleanupFiles(ctx context.Context) {
	_ = os.RemoveAll(filepath.Join(c.bundle, imageDirName))
	if c.mounted {
		if err := mount.UnmountAll(filepath.Join(c.bundle, "rootfs"), 0); err != nil {
			log.G(ctx).WithError(err).Warn("unmount rootfs")
			return
		}
		c.mounted = false
	}
}

// Exec records a process to run in the box; Start runs it.
func (s *service) Exec(ctx context.Context, r *taskapi.ExecProcessRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if r.ExecID == "" {
		return nil, fmt.Errorf("exec in %s: an exec ID is required: %w", r.ID, errdefs.ErrInvalidArgument)
	}
	var ps specs.Process
	if r.Spec != nil {
		if err := json.Unmarshal(r.Spec.GetValue(), &ps); err != nil {
			return nil, fmt.Errorf("exec in %s: the process spec: %w", r.ID, errdefs.ErrInvalidArgument)
		}
	}
	if len(ps.Args) == 0 {
		return nil, fmt.Errorf("exec in %s: the process has no args: %w", r.ID, errdefs.ErrInvalidArgument)
	}
	p := newProcess(r.ExecID)
	p.argv, p.env, p.cwd, p.user = ps.Args, ps.Env, ps.Cwd, ociUser(ps.User)
	p.terminal, p.stdin, p.stdout, p.stderr = r.Terminal, r.Stdin, r.Stdout, r.Stderr
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.execs[r.ExecID]; ok {
		return nil, fmt.Errorf("exec %s in %s: %w", r.ExecID, r.ID, errdefs.ErrAlreadyExists)
	}
	c.execs[r.ExecID] = p
	s.publish(ctx, runtime.TaskExecAddedEventTopic, &eventstypes.TaskExecAdded{ContainerID: r.ID, ExecID: r.ExecID})
	return &emptypb.Empty{}, nil
}

// Kill delivers a signal to a process in the box. The init process is the
// container: its end is the task's exit.
func (s *service) Kill(ctx context.Context, r *taskapi.KillRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	p, err := c.process(r.ExecID)
	if err != nil {
		return nil, err
	}
	started, exited, _, _ := p.snapshot()
	if exited {
		return nil, fmt.Errorf("%s already finished: %w", processName(r.ID, r.ExecID), errdefs.ErrNotFound)
	}
	if !started {
		// A created, never started process has nothing to signal: it ends.
		p.setExited(128 + r.Signal)
		s.exited(c, p)
		return &emptypb.Empty{}, nil
	}
	select {
	case p.signals <- int(r.Signal):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if r.All && r.ExecID == "" {
		c.mu.Lock()
		for _, e := range c.execs {
			if st, ex, _, _ := e.snapshot(); st && !ex {
				select {
				case e.signals <- int(r.Signal):
				default:
				}
			}
		}
		c.mu.Unlock()
	}
	return &emptypb.Empty{}, nil
}

// Wait blocks until the process ends and returns its exit status.
func (s *service) Wait(ctx context.Context, r *taskapi.WaitRequest) (*taskapi.WaitResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	p, err := c.process(r.ExecID)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	_, _, status, at := p.snapshot()
	return &taskapi.WaitResponse{ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

// State reports a process's status.
func (s *service) State(ctx context.Context, r *taskapi.StateRequest) (*taskapi.StateResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	p, err := c.process(r.ExecID)
	if err != nil {
		return nil, err
	}
	started, exited, status, at := p.snapshot()
	st := task.Status_CREATED
	switch {
	case exited:
		st = task.Status_STOPPED
	case started:
		st = task.Status_RUNNING
		if b, err := s.rt.GetInfo(ctx, c.boxID); err == nil && b.Status == model.StatusPaused {
			st = task.Status_PAUSED
		}
	}
	return &taskapi.StateResponse{
		ID: r.ID, ExecID: r.ExecID, Bundle: c.bundle, Pid: p.getPID(), Status: st,
		Stdin: p.stdin, Stdout: p.stdout, Stderr: p.stderr, Terminal: p.terminal,
		ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at),
	}, nil
}

// Pids lists the task's host process: the box's hypervisor.
func (s *service) Pids(ctx context.Context, r *taskapi.PidsRequest) (*taskapi.PidsResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	var out []*task.ProcessInfo
	if pid := s.vmPID(ctx, c); pid != 0 {
		out = append(out, &task.ProcessInfo{Pid: pid})
	}
	return &taskapi.PidsResponse{Processes: out}, nil
}

// Pause and Resume pause the box's vCPUs (where the VMM can).
func (s *service) Pause(ctx context.Context, r *taskapi.PauseRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if err := s.rt.Pause(ctx, c.boxID); err != nil {
		return nil, mapErr(fmt.Errorf("pause %s: %w", r.ID, err))
	}
	s.publish(ctx, runtime.TaskPausedEventTopic, &eventstypes.TaskPaused{ContainerID: r.ID})
	return &emptypb.Empty{}, nil
}

func (s *service) Resume(ctx context.Context, r *taskapi.ResumeRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if err := s.rt.Resume(ctx, c.boxID); err != nil {
		return nil, mapErr(fmt.Errorf("resume %s: %w", r.ID, err))
	}
	s.publish(ctx, runtime.TaskResumedEventTopic, &eventstypes.TaskResumed{ContainerID: r.ID})
	return &emptypb.Empty{}, nil
}

func (s *service) Checkpoint(ctx context.Context, r *taskapi.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, fmt.Errorf("checkpoint through containerd: use `boxctl checkpoint` on the box: %w", errdefs.ErrNotImplemented)
}

func (s *service) Update(ctx context.Context, r *taskapi.UpdateTaskRequest) (*emptypb.Empty, error) {
	return nil, fmt.Errorf("update of a running box's resources: %w", errdefs.ErrNotImplemented)
}

// ResizePty resizes a process's terminal.
func (s *service) ResizePty(ctx context.Context, r *taskapi.ResizePtyRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	p, err := c.process(r.ExecID)
	if err != nil {
		return nil, err
	}
	select {
	case p.resize <- core.TermSize{Rows: uint16(r.Height), Cols: uint16(r.Width)}:
	default: // a burst of resizes: the latest ones that fit are enough
	}
	return &emptypb.Empty{}, nil
}

// CloseIO closes a process's stdin.
func (s *service) CloseIO(ctx context.Context, r *taskapi.CloseIORequest) (*emptypb.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	p, err := c.process(r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.Stdin {
		p.closeStdin()
	}
	return &emptypb.Empty{}, nil
}

// Stats reports the box's use as cgroup v2 metrics (what containerd's
// clients decode): memory from the guest, CPU time from the guest.
func (s *service) Stats(ctx context.Context, r *taskapi.StatsRequest) (*taskapi.StatsResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	st, err := s.rt.Stats(ctx, c.boxID)
	if err != nil {
		return nil, mapErr(fmt.Errorf("stats of %s: %w", r.ID, err))
	}
	any, err := typeurl.MarshalAnyToProto(cgroupMetrics(st))
	if err != nil {
		return nil, err
	}
	return &taskapi.StatsResponse{Stats: any}, nil
}

// Connect returns the shim's and the task's PIDs.
func (s *service) Connect(ctx context.Context, r *taskapi.ConnectRequest) (*taskapi.ConnectResponse, error) {
	var pid uint32
	if c, err := s.get(r.ID); err == nil {
		pid = s.vmPID(ctx, c)
	}
	return &taskapi.ConnectResponse{ShimPid: uint32(os.Getpid()), TaskPid: pid}, nil
}

// Shutdown ends the shim once it serves no container.
func (s *service) Shutdown(ctx context.Context, r *taskapi.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	n := len(s.containers)
	s.mu.Unlock()
	if n > 0 {
		return &emptypb.Empty{}, nil
	}
	s.shutdown.Shutdown()
	return &emptypb.Empty{}, nil
}

// mapErr gives containerd the errdefs class of a core error.
func mapErr(err error) error {
	switch {
	case errors.Is(err, core.ErrNotFound):
		return fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
	case errors.Is(err, core.ErrInvalidState):
		return fmt.Errorf("%w: %w", errdefs.ErrFailedPrecondition, err)
	case errors.Is(err, core.ErrUnsupported):
		return fmt.Errorf("%w: %w", errdefs.ErrNotImplemented, err)
	case errors.Is(err, core.ErrInvalidArgument):
		return fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
	}
	return err
}

func processName(id, execID string) string {
	if execID == "" {
		return "the init process of " + id
	}
	return "exec " + execID + " of " + id
}

func ociUser(u specs.User) string {
	if u.Username != "" {
		return u.Username
	}
	if u.UID == 0 && u.GID == 0 {
		return ""
	}
	return strconv.FormatUint(uint64(u.UID), 10) + ":" + strconv.FormatUint(uint64(u.GID), 10)
}
