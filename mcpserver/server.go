// Package mcpserver owns boxctl's Model Context Protocol tools: what an
// agent calls through `boxctl mcp` to create sandboxes, run commands in
// them, move files in and out, and fork or checkpoint them. It is one more
// client of package core and holds no lifecycle logic of its own; the
// transport (stdio) and the process's exit belong to the command.
//
// Boxes the tools create carry the labels LabelManaged and LabelSession,
// and LabelPersist when the agent asked for them to outlive the session.
// Cleanup removes a session's boxes that were not persisted.
package mcpserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
)

// Labels on the boxes the server creates. Forks copy their source's
// labels, so a fork belongs to the same session and has the same
// persistence as the box it was forked from.
const (
	LabelManaged = "boxctl.mcp"
	LabelSession = "boxctl.mcp.session"
	LabelPersist = "boxctl.mcp.persist"
)

// Limits bound what one tool call may take or return.
type Limits struct {
	// OutputBytes caps stdout and stderr of run_command, each.
	OutputBytes int
	// DefaultTimeout applies to run_command when the call gives none;
	// MaxTimeout is the longest a call may ask for.
	DefaultTimeout, MaxTimeout time.Duration
	// FileBytes caps what read_file returns and what write_file accepts.
	FileBytes int
}

// DefaultLimits are the limits New applies where Options leaves them zero.
var DefaultLimits = Limits{
	OutputBytes:    64 << 10,
	DefaultTimeout: 60 * time.Second,
	MaxTimeout:     30 * time.Minute,
	FileBytes:      1 << 20,
}

// Options configure New.
type Options struct {
	// SessionID labels the boxes this server creates; "" picks a random one
	// (see NewSessionID). Cleanup takes the same ID.
	SessionID string
	// AnyBox lets the tools act on boxes the MCP server did not create
	// (boxes made with the CLI, say). Off by default: an agent then sees
	// and touches only sandboxes made through MCP.
	AnyBox bool
	// Limits; zero fields take DefaultLimits.
	Limits Limits
	// Version is reported to clients as the server's version.
	Version string
	// Logger logs tool calls at debug level; nil logs nothing.
	Logger hclog.Logger
}

// server holds what the tool handlers share.
type server struct {
	rt     *core.Runtime
	opts   Options
	limits Limits
	log    hclog.Logger
}

// NewSessionID returns a random session ID for Options.SessionID.
func NewSessionID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// New returns an MCP server whose tools act on rt's boxes. Run it on a
// transport (mcp.StdioTransport for `boxctl mcp`); call Cleanup with the
// same session ID when it ends.
func New(rt *core.Runtime, opts Options) *mcp.Server {
	if opts.SessionID == "" {
		opts.SessionID = NewSessionID()
	}
	s := &server{rt: rt, opts: opts, limits: withDefaults(opts.Limits), log: opts.Logger}
	if s.log == nil {
		s.log = hclog.NewNullLogger()
	}
	version := opts.Version
	if version == "" {
		version = "dev"
	}
	ms := mcp.NewServer(&mcp.Implementation{Name: "boxctl", Title: "boxctl sandboxes", Version: version}, &mcp.ServerOptions{
		Instructions: instructions(s.limits),
		// No logging capability: logs go to the host's stderr, not to the
		// client.
		Capabilities: &mcp.ServerCapabilities{},
	})
	s.addTools(ms)
	return ms
}

func withDefaults(l Limits) Limits {
	d := DefaultLimits
	if l.OutputBytes > 0 {
		d.OutputBytes = l.OutputBytes
	}
	if l.DefaultTimeout > 0 {
		d.DefaultTimeout = l.DefaultTimeout
	}
	if l.MaxTimeout > 0 {
		d.MaxTimeout = l.MaxTimeout
	}
	if d.DefaultTimeout > d.MaxTimeout {
		d.DefaultTimeout = d.MaxTimeout
	}
	if l.FileBytes > 0 {
		d.FileBytes = l.FileBytes
	}
	return d
}

func instructions(l Limits) string {
	return fmt.Sprintf(`boxctl gives you sandboxes: Linux micro-VMs, each with its own kernel, booted from an OCI image (alpine, debian:bookworm, python:3.12-slim, ...). Nothing you do inside one reaches the host.

Typical use: create_sandbox once, then run_command, write_file, read_file and list_files as often as needed, then remove_sandbox. Sandboxes keep their files and processes between calls. They are removed when this MCP session ends unless you created them with persist=true.

Commands time out after %s unless you pass timeout_seconds (at most %s). stdout and stderr are each cut at %d bytes; the result says when and by how much. File paths are absolute paths inside the sandbox.`,
		l.DefaultTimeout, l.MaxTimeout, l.OutputBytes)
}

// Cleanup removes the boxes of session id that were not created with
// persist, killing those still running, and returns their names. It keeps
// going past a box it cannot remove and reports every failure.
func Cleanup(ctx context.Context, rt *core.Runtime, id string) ([]string, error) {
	boxes, err := rt.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list boxes of MCP session %s: %w", id, err)
	}
	var removed []string
	var errs []error
	for _, b := range boxes {
		if b.Config.Labels[LabelSession] != id || b.Config.Labels[LabelPersist] != "" {
			continue
		}
		err := rt.Remove(ctx, b.ID, core.RemoveOptions{Force: true})
		switch {
		case err == nil, errors.Is(err, core.ErrNotFound):
			// Gone already: an auto-remove box whose VM ended meanwhile.
			removed = append(removed, b.Name)
		default:
			errs = append(errs, fmt.Errorf("remove %s: %w", b.Name, err))
		}
	}
	sort.Strings(removed)
	return removed, errors.Join(errs...)
}

// box returns the record of the box ref names, refusing boxes the server
// may not touch.
func (s *server) box(ctx context.Context, ref string) (*model.Box, error) {
	if strings.TrimSpace(ref) == "" {
		return nil, errors.New(`no sandbox given: pass "sandbox", the name or ID create_sandbox returned (list_sandboxes shows them)`)
	}
	b, err := s.rt.GetInfo(ctx, ref)
	if err != nil {
		return nil, err
	}
	if !s.opts.AnyBox && b.Config.Labels[LabelManaged] == "" {
		return nil, fmt.Errorf("box %s was not created through MCP and this server only acts on its own sandboxes (start `boxctl mcp --any-box` to allow others): %w", b.Name, core.ErrPermission)
	}
	return b, nil
}

// toolError makes err a message a model can act on: core's errors already
// say what went wrong; this adds what to call next.
func toolError(err error) error {
	if err == nil {
		return nil
	}
	var hint string
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		hint = "the call was cancelled or timed out before it finished"
	case errors.Is(err, core.ErrNotFound):
		hint = "check the name with list_sandboxes (or list_files for paths)"
	case errors.Is(err, core.ErrAmbiguous):
		hint = "give the full sandbox ID or its name"
	case errors.Is(err, core.ErrAlreadyExists):
		hint = "choose another name, or use the existing one"
	case errors.Is(err, core.ErrUnsupported):
		hint = "this operation is not available for this sandbox; carry on without it"
	case errors.Is(err, core.ErrShutDown):
		hint = "the MCP server is shutting down"
	}
	if hint == "" {
		return err
	}
	return fmt.Errorf("%w (%s)", err, hint)
}
