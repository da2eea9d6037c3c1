package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/boxctl/boxctl/mcpserver"
)

// mcpCleanupTimeout bounds the removal of a session's boxes at exit.
const mcpCleanupTimeout = 2 * time.Minute

func (a *app) mcpCommand() *cobra.Command {
	var opts mcpserver.Options
	c := &cobra.Command{
		Use:   "mcp",
		Short: "Serve sandboxes to an AI agent over the Model Context Protocol (stdio)",
		Long: `Run an MCP server on stdin/stdout: its tools let an agent create sandboxes
(boxes), run commands in them, read, write and list files, and fork or
checkpoint them. Configure it in an MCP client as the command "boxctl" with
the arguments ["mcp"] (see docs/mcp.md).

Boxes it creates carry the labels boxctl.mcp=1 and boxctl.mcp.session=ID.
When the client closes stdin, or on SIGINT or SIGTERM, it removes the boxes
of its session, except those the agent created with persist: true. If it is
killed outright, the boxes' monitors stop them and they are removed anyway.

stdout carries the protocol only; logs go to stderr (--log-level).`,
		Example: `  {"mcpServers": {"boxctl": {"command": "boxctl", "args": ["mcp"]}}}`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opts.Limits.DefaultTimeout > 0 && opts.Limits.MaxTimeout > 0 && opts.Limits.DefaultTimeout > opts.Limits.MaxTimeout {
				return fmt.Errorf("--timeout %s is above --max-timeout %s", opts.Limits.DefaultTimeout, opts.Limits.MaxTimeout)
			}
			// The protocol owns stdout: it gets its own descriptor, and fd 1
			// becomes stderr, so that nothing else (a child process, a
			// stray print) can corrupt the stream.
			proto, err := claimStdout()
			if err != nil {
				return err
			}
			defer proto.Close()
			a.stdout = a.stderr
			ctx := cmd.Context()
			rt, err := a.runtime(ctx)
			if err != nil {
				return err
			}
			if opts.SessionID == "" {
				opts.SessionID = mcpserver.NewSessionID()
			}
			opts.Version = version
			opts.Logger = a.logger(a.cfg).Named("mcp")
			log := opts.Logger
			log.Info("serving MCP on stdio", "session", opts.SessionID)
			srv := mcpserver.New(rt, opts)
			runErr := srv.Run(ctx, &mcp.IOTransport{Reader: os.Stdin, Writer: proto})
			if errors.Is(runErr, context.Canceled) {
				runErr = nil // SIGINT or SIGTERM: a normal end
			}
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), mcpCleanupTimeout)
			defer cancel()
			removed, err := mcpserver.Cleanup(cctx, rt, opts.SessionID)
			if len(removed) > 0 {
				log.Info("removed the session's sandboxes", "boxes", strings.Join(removed, ","))
			}
			if err != nil {
				return fmt.Errorf("clean up the sandboxes of MCP session %s: %w", opts.SessionID, err)
			}
			if runErr != nil {
				return fmt.Errorf("mcp: %w", runErr)
			}
			return nil
		},
	}
	fl := c.Flags()
	fl.StringVar(&opts.SessionID, "session", "", "session ID for the boxctl.mcp.session label (default: random)")
	fl.BoolVar(&opts.AnyBox, "any-box", false, "let the tools act on every box of the home, not only on those created through MCP")
	fl.DurationVar(&opts.Limits.DefaultTimeout, "timeout", mcpserver.DefaultLimits.DefaultTimeout, "run_command's timeout when the agent gives none")
	fl.DurationVar(&opts.Limits.MaxTimeout, "max-timeout", mcpserver.DefaultLimits.MaxTimeout, "the longest timeout run_command accepts")
	fl.IntVar(&opts.Limits.OutputBytes, "output-limit", mcpserver.DefaultLimits.OutputBytes, "bytes of stdout and of stderr run_command returns, each")
	fl.IntVar(&opts.Limits.FileBytes, "file-limit", mcpserver.DefaultLimits.FileBytes, "bytes read_file returns and write_file accepts per call")
	return c
}

// claimStdout moves the process's stdout to a new descriptor for the
// protocol and points fd 1 at stderr.
func claimStdout() (*os.File, error) {
	fd, err := unix.Dup(1)
	if err != nil {
		return nil, fmt.Errorf("mcp: duplicate stdout: %w", err)
	}
	unix.CloseOnExec(fd)
	if err := unix.Dup2(2, 1); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("mcp: point stdout at stderr: %w", err)
	}
	return os.NewFile(uintptr(fd), "mcp-stdout"), nil
}
