package mcpserver

import (
	"context"
	"fmt"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
)

// CreateSandboxInput is create_sandbox's arguments.
type CreateSandboxInput struct {
	Image    string   `json:"image" jsonschema:"OCI image to boot, as for docker run: alpine, debian:bookworm, python:3.12-slim, ghcr.io/org/app:tag, or oci-layout:/DIR"`
	Name     string   `json:"name,omitempty" jsonschema:"name for the sandbox (letters, digits, '_', '.', '-'); default: generated. Names are unique on this host"`
	Env      []string `json:"env,omitempty" jsonschema:"environment variables KEY=VALUE every command in the sandbox gets"`
	CPUs     int      `json:"cpus,omitempty" jsonschema:"number of vCPUs, 1-256 (default 1)"`
	Memory   string   `json:"memory,omitempty" jsonschema:"memory size, e.g. 512MiB or 2GiB (default 512MiB, at least 64MiB)"`
	Network  string   `json:"network,omitempty" jsonschema:"network: 'user' (outbound through the host, the default) or 'none' (no network device at all)"`
	AllowNet []string `json:"allow_net,omitempty" jsonschema:"when set, only these destinations are reachable: HOST[:PORT] or CIDR[:PORT], e.g. pypi.org:443; everything else is refused"`
	Persist  bool     `json:"persist,omitempty" jsonschema:"keep the sandbox (running) after this MCP session ends; default false: it is removed when the session ends"`
}

// SandboxInfo describes a sandbox.
type SandboxInfo struct {
	ID      string `json:"id" jsonschema:"the sandbox's full ID"`
	Name    string `json:"name" jsonschema:"the sandbox's name; pass it (or the ID) as 'sandbox' to the other tools"`
	Image   string `json:"image"`
	Status  string `json:"status" jsonschema:"configured, running, paused, stopped or suspended"`
	Persist bool   `json:"persist" jsonschema:"whether it outlives this MCP session"`
	// Managed and Session say who made it: this server, another MCP
	// session, or someone else.
	Managed   bool   `json:"managed" jsonschema:"whether it was created through MCP"`
	Session   string `json:"session,omitempty" jsonschema:"the MCP session that created it"`
	CPUs      int    `json:"cpus,omitempty"`
	MemoryMiB uint64 `json:"memory_mib,omitempty"`
	CreatedAt string `json:"created_at"`
}

func (s *server) sandboxInfo(b *model.Box) SandboxInfo {
	l := b.Config.Labels
	return SandboxInfo{
		ID: b.ID, Name: b.Name, Image: b.Config.Image, Status: string(b.Status),
		Persist: l[LabelPersist] != "", Managed: l[LabelManaged] != "", Session: l[LabelSession],
		CPUs: b.Config.CPUs, MemoryMiB: b.Config.MemoryMiB, CreatedAt: b.CreatedAt.UTC().Format(time.RFC3339),
	}
}

// boxConfig turns create_sandbox's arguments into a box configuration.
func (s *server) boxConfig(in CreateSandboxInput) (model.BoxConfig, error) {
	if in.Image == "" {
		return model.BoxConfig{}, fmt.Errorf(`"image" is required: an OCI image reference such as alpine or debian:bookworm: %w`, core.ErrInvalidArgument)
	}
	c := model.BoxConfig{
		Image:       in.Image,
		Env:         in.Env,
		CPUs:        in.CPUs,
		NetworkMode: in.Network,
		AllowNet:    in.AllowNet,
		Labels: map[string]string{
			LabelManaged: "1",
			LabelSession: s.opts.SessionID,
		},
	}
	if in.CPUs < 0 || in.CPUs > 256 {
		return model.BoxConfig{}, fmt.Errorf(`"cpus" %d: give 1 to 256 vCPUs (or leave it out for the default): %w`, in.CPUs, core.ErrInvalidArgument)
	}
	if in.Memory != "" {
		n, err := config.ParseSize(in.Memory)
		if err == nil {
			err = config.CheckMemory(n)
		}
		if err != nil {
			return model.BoxConfig{}, fmt.Errorf(`"memory" %q: %v; write it like 512MiB or 2GiB: %w`, in.Memory, err, core.ErrInvalidArgument)
		}
		c.MemoryMiB = n >> 20
	}
	if in.Persist {
		// Detached: it keeps running after this process exits.
		c.Labels[LabelPersist] = "1"
		c.Detach = true
	} else {
		// Tied to this process: if the server dies without cleaning up
		// (kill -9), the box's monitor stops the VM and, as an auto-remove
		// box, it is removed.
		c.AutoRemove = true
	}
	return c, nil
}

func (s *server) createSandbox(ctx context.Context, _ *mcp.CallToolRequest, in CreateSandboxInput) (*mcp.CallToolResult, SandboxInfo, error) {
	c, err := s.boxConfig(in)
	if err != nil {
		return nil, SandboxInfo{}, err
	}
	if _, err := s.rt.EnsureImage(ctx, c.Image, "", nil); err != nil {
		return nil, SandboxInfo{}, toolError(fmt.Errorf("get image %s: %w", c.Image, err))
	}
	box, err := s.rt.Create(ctx, core.BoxOptions{Name: in.Name, Config: c})
	if err != nil {
		return nil, SandboxInfo{}, toolError(err)
	}
	// Booted now rather than at the first command, so that a box that
	// cannot start says so here. An auto-remove box that fails to start is
	// removed by the runtime.
	if err := s.rt.Start(ctx, box.ID(), core.Detach(c.Detach)); err != nil {
		if !c.AutoRemove {
			_ = s.rt.Remove(context.WithoutCancel(ctx), box.ID(), core.RemoveOptions{Force: true})
		}
		return nil, SandboxInfo{}, toolError(fmt.Errorf("start the sandbox: %w", err))
	}
	b, err := s.rt.GetInfo(ctx, box.ID())
	if err != nil {
		return nil, SandboxInfo{}, toolError(err)
	}
	s.log.Debug("created sandbox", "box", b.Name, "id", b.ID, "image", c.Image, "persist", in.Persist)
	return nil, s.sandboxInfo(b), nil
}

// ListSandboxesInput is list_sandboxes's arguments.
type ListSandboxesInput struct {
	All bool `json:"all,omitempty" jsonschema:"list every box on this host, not only the sandboxes this MCP session created"`
}

// ListSandboxesOutput is list_sandboxes's result.
type ListSandboxesOutput struct {
	Sandboxes []SandboxInfo `json:"sandboxes"`
}

func (s *server) listSandboxes(ctx context.Context, _ *mcp.CallToolRequest, in ListSandboxesInput) (*mcp.CallToolResult, ListSandboxesOutput, error) {
	boxes, err := s.rt.List(ctx)
	if err != nil {
		return nil, ListSandboxesOutput{}, toolError(err)
	}
	out := ListSandboxesOutput{Sandboxes: []SandboxInfo{}}
	for _, b := range boxes {
		if !in.All && b.Config.Labels[LabelSession] != s.opts.SessionID {
			continue
		}
		out.Sandboxes = append(out.Sandboxes, s.sandboxInfo(b))
	}
	return nil, out, nil
}

// SandboxInput names a sandbox.
type SandboxInput struct {
	Sandbox string `json:"sandbox" jsonschema:"the sandbox's name or ID, as create_sandbox returned it"`
}

// RemoveSandboxOutput is remove_sandbox's result.
type RemoveSandboxOutput struct {
	Removed string `json:"removed" jsonschema:"the name of the removed sandbox"`
}

func (s *server) removeSandbox(ctx context.Context, _ *mcp.CallToolRequest, in SandboxInput) (*mcp.CallToolResult, RemoveSandboxOutput, error) {
	b, err := s.box(ctx, in.Sandbox)
	if err != nil {
		return nil, RemoveSandboxOutput{}, toolError(err)
	}
	if err := s.rt.Remove(ctx, b.ID, core.RemoveOptions{Force: true}); err != nil {
		return nil, RemoveSandboxOutput{}, toolError(err)
	}
	s.log.Debug("removed sandbox", "box", b.Name)
	return nil, RemoveSandboxOutput{Removed: b.Name}, nil
}

// ForkSandboxInput is fork_sandbox's arguments.
type ForkSandboxInput struct {
	Sandbox string `json:"sandbox" jsonschema:"the running sandbox to fork (name or ID)"`
	Name    string `json:"name,omitempty" jsonschema:"name of the fork; with count > 1 the forks are NAME-1 ... NAME-N; default: generated"`
	Count   int    `json:"count,omitempty" jsonschema:"how many forks to make, 1-16 (default 1)"`
}

// ForkSandboxOutput is fork_sandbox's result.
type ForkSandboxOutput struct {
	Forks    []SandboxInfo `json:"forks"`
	PausedMS int64         `json:"paused_ms" jsonschema:"how long the source sandbox was paused to take the fork"`
}

// maxForks bounds one fork_sandbox call: each fork is a running VM.
const maxForks = 16

func (s *server) forkSandbox(ctx context.Context, _ *mcp.CallToolRequest, in ForkSandboxInput) (*mcp.CallToolResult, ForkSandboxOutput, error) {
	if in.Count < 0 || in.Count > maxForks {
		return nil, ForkSandboxOutput{}, fmt.Errorf(`"count" %d: fork 1 to %d sandboxes at a time: %w`, in.Count, maxForks, core.ErrInvalidArgument)
	}
	b, err := s.box(ctx, in.Sandbox)
	if err != nil {
		return nil, ForkSandboxOutput{}, toolError(err)
	}
	fi, err := s.rt.Fork(ctx, b.ID, core.ForkOptions{Name: in.Name, Count: in.Count})
	if err != nil {
		return nil, ForkSandboxOutput{}, toolError(err)
	}
	out := ForkSandboxOutput{Forks: []SandboxInfo{}, PausedMS: fi.Paused.Milliseconds()}
	for _, f := range fi.Boxes {
		info, err := f.Info(ctx)
		if err != nil {
			return nil, ForkSandboxOutput{}, toolError(err)
		}
		out.Forks = append(out.Forks, s.sandboxInfo(info))
	}
	return nil, out, nil
}

// CheckpointSandboxInput is checkpoint_sandbox's arguments.
type CheckpointSandboxInput struct {
	Sandbox string `json:"sandbox" jsonschema:"the running sandbox to checkpoint (name or ID)"`
	Name    string `json:"name,omitempty" jsonschema:"checkpoint name; default: generated from the time"`
}

// CheckpointSandboxOutput is checkpoint_sandbox's result.
type CheckpointSandboxOutput struct {
	Checkpoint string `json:"checkpoint" jsonschema:"the checkpoint's name"`
	SizeBytes  int64  `json:"size_bytes" jsonschema:"size of the saved memory state"`
	PausedMS   int64  `json:"paused_ms" jsonschema:"how long the sandbox was paused to take it"`
}

func (s *server) checkpointSandbox(ctx context.Context, _ *mcp.CallToolRequest, in CheckpointSandboxInput) (*mcp.CallToolResult, CheckpointSandboxOutput, error) {
	b, err := s.box(ctx, in.Sandbox)
	if err != nil {
		return nil, CheckpointSandboxOutput{}, toolError(err)
	}
	ci, err := s.rt.CreateCheckpoint(ctx, b.ID, in.Name)
	if err != nil {
		return nil, CheckpointSandboxOutput{}, toolError(err)
	}
	return nil, CheckpointSandboxOutput{
		Checkpoint: ci.Name, SizeBytes: ci.Size, PausedMS: ci.Paused.Milliseconds(),
	}, nil
}

// RestoreCheckpointInput is restore_checkpoint's arguments.
type RestoreCheckpointInput struct {
	Sandbox    string `json:"sandbox" jsonschema:"the sandbox the checkpoint was taken of (name or ID)"`
	Checkpoint string `json:"checkpoint" jsonschema:"the checkpoint's name, as checkpoint_sandbox returned it"`
}

// RestoreCheckpointOutput is restore_checkpoint's result.
type RestoreCheckpointOutput struct {
	Sandbox SandboxInfo `json:"sandbox"`
}

func (s *server) restoreCheckpoint(ctx context.Context, _ *mcp.CallToolRequest, in RestoreCheckpointInput) (*mcp.CallToolResult, RestoreCheckpointOutput, error) {
	b, err := s.box(ctx, in.Sandbox)
	if err != nil {
		return nil, RestoreCheckpointOutput{}, toolError(err)
	}
	if in.Checkpoint == "" {
		return nil, RestoreCheckpointOutput{}, fmt.Errorf(`"checkpoint" is required: the name checkpoint_sandbox returned: %w`, core.ErrInvalidArgument)
	}
	// Force: the sandbox is running (an agent has no other way to stop
	// it), and going back is what was asked for.
	if err := s.rt.RestoreCheckpoint(ctx, b.ID, in.Checkpoint, core.RestoreCheckpointOptions{Force: true}); err != nil {
		return nil, RestoreCheckpointOutput{}, toolError(err)
	}
	cur, err := s.rt.GetInfo(ctx, b.ID)
	if err != nil {
		return nil, RestoreCheckpointOutput{}, toolError(err)
	}
	return nil, RestoreCheckpointOutput{Sandbox: s.sandboxInfo(cur)}, nil
}
