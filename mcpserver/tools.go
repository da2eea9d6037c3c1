package mcpserver

import (
	"fmt"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// Tool names.
const (
	ToolCreateSandbox     = "create_sandbox"
	ToolListSandboxes     = "list_sandboxes"
	ToolRemoveSandbox     = "remove_sandbox"
	ToolRunCommand        = "run_command"
	ToolReadFile          = "read_file"
	ToolWriteFile         = "write_file"
	ToolListFiles         = "list_files"
	ToolForkSandbox       = "fork_sandbox"
	ToolCheckpointSandbox = "checkpoint_sandbox"
	ToolRestoreCheckpoint = "restore_checkpoint"
)

func (s *server) addTools(ms *mcp.Server) {
	l := s.limits
	yes, no := true, false

	mcp.AddTool(ms, &mcp.Tool{
		Name:  ToolCreateSandbox,
		Title: "Create a sandbox",
		Description: `Create and boot a sandbox: a Linux micro-VM with its own kernel, running an OCI image. Returns its name and ID; pass either as "sandbox" to the other tools.

Use it before anything else, once per independent environment (one is usually enough: it keeps files and processes between calls). Booting takes a few seconds; pulling an image the host does not have yet takes longer.

The sandbox is removed when this MCP session ends unless persist is true. Network is on by default (network: "none" turns it off; allow_net limits it to listed hosts).`,
		Annotations: &mcp.ToolAnnotations{Title: "Create a sandbox", DestructiveHint: &no, OpenWorldHint: &yes},
	}, s.createSandbox)

	mcp.AddTool(ms, &mcp.Tool{
		Name:        ToolListSandboxes,
		Title:       "List sandboxes",
		Description: `List the sandboxes this MCP session created (all: true lists every box on the host), newest first, with their status. Use it to find a sandbox's name again.`,
		Annotations: &mcp.ToolAnnotations{Title: "List sandboxes", ReadOnlyHint: true, IdempotentHint: true, OpenWorldHint: &no},
	}, s.listSandboxes)

	mcp.AddTool(ms, &mcp.Tool{
		Name:        ToolRemoveSandbox,
		Title:       "Remove a sandbox",
		Description: `Remove a sandbox for good: its VM is killed and its files are deleted. Use it when you are done with a sandbox, also a persisted one. Nothing can be recovered afterwards.`,
		Annotations: &mcp.ToolAnnotations{Title: "Remove a sandbox", DestructiveHint: &yes, IdempotentHint: true, OpenWorldHint: &no},
	}, s.removeSandbox)

	mcp.AddTool(ms, &mcp.Tool{
		Name:  ToolRunCommand,
		Title: "Run a command in a sandbox",
		Description: fmt.Sprintf(`Run a command in a sandbox and wait for it to end. Returns exit_code, stdout and stderr.

Give "command" as a shell command line (run with /bin/sh -c: pipes, &&, redirections and globs work), or "argv" as a list (no shell). Each call is a new process: cd and shell variables do not carry over to the next call (use "working_dir" and "env", or chain with &&), but files do.

The command is killed after timeout_seconds (default %g, at most %g); the result then has timed_out: true. For longer work, start it in the background (nohup CMD > /tmp/out.log 2>&1 &) and poll the log. stdout and stderr are each cut after %d bytes (stdout_truncated/stderr_truncated and a note say how much was cut): redirect big output to a file and look at parts of it. There is no terminal: interactive programs must be given their input through "stdin" or flags (apt-get -y, pip --no-input).`,
			l.DefaultTimeout.Seconds(), l.MaxTimeout.Seconds(), l.OutputBytes),
		Annotations: &mcp.ToolAnnotations{Title: "Run a command", DestructiveHint: &yes, OpenWorldHint: &yes},
	}, s.runCommand)

	mcp.AddTool(ms, &mcp.Tool{
		Name:        ToolReadFile,
		Title:       "Read a file from a sandbox",
		Description: fmt.Sprintf(`Read a file inside a sandbox. "path" must be absolute (/etc/os-release, /root/out.txt). Text comes back as is; a binary file (or encoding: "base64") comes back base64-encoded, as the "encoding" field says. At most %d bytes per call: when truncated is true, call again with a larger offset. For a directory use list_files.`, l.FileBytes),
		Annotations: &mcp.ToolAnnotations{Title: "Read a file", ReadOnlyHint: true, IdempotentHint: true, OpenWorldHint: &no},
	}, s.readFile)

	mcp.AddTool(ms, &mcp.Tool{
		Name:        ToolWriteFile,
		Title:       "Write a file into a sandbox",
		Description: fmt.Sprintf(`Create or replace a file inside a sandbox with the given content (text, or base64 with encoding: "base64" for binary data). "path" must be absolute; missing parent directories are created. The file belongs to root, mode 0644 unless "mode" says otherwise (0755 for a script). At most %d bytes per call. Prefer this over echo/heredocs in run_command: no quoting problems.`, l.FileBytes),
		Annotations: &mcp.ToolAnnotations{Title: "Write a file", DestructiveHint: &yes, IdempotentHint: true, OpenWorldHint: &no},
	}, s.writeFile)

	mcp.AddTool(ms, &mcp.Tool{
		Name:        ToolListFiles,
		Title:       "List a directory in a sandbox",
		Description: fmt.Sprintf(`List a directory inside a sandbox, like ls -la: name, type, permissions, size, owner, group, modification time and symlink targets. "path" must be absolute. At most %d entries; it does not recurse (use run_command with find for that).`, maxListEntries),
		Annotations: &mcp.ToolAnnotations{Title: "List files", ReadOnlyHint: true, IdempotentHint: true, OpenWorldHint: &no},
	}, s.listFiles)

	mcp.AddTool(ms, &mcp.Tool{
		Name:        ToolForkSandbox,
		Title:       "Fork a running sandbox",
		Description: `Make copies of a running sandbox at this instant: memory, running processes and files included. Each fork is a new, independent sandbox (same persistence as the source); the source keeps running. Use it to try several approaches from one prepared state. Only where the host's hypervisor can save VM memory, and not for sandboxes with host directories mounted; otherwise it answers with an error saying so.`,
		Annotations: &mcp.ToolAnnotations{Title: "Fork a sandbox", DestructiveHint: &no, OpenWorldHint: &no},
	}, s.forkSandbox)

	mcp.AddTool(ms, &mcp.Tool{
		Name:        ToolCheckpointSandbox,
		Title:       "Checkpoint a running sandbox",
		Description: `Save a running sandbox's memory, processes and files under a name, so that restore_checkpoint can bring it back to exactly this point later (before a risky step, say). The sandbox keeps running. Only where the host's hypervisor can save VM memory; otherwise it answers with an error saying so.`,
		Annotations: &mcp.ToolAnnotations{Title: "Checkpoint a sandbox", DestructiveHint: &no, OpenWorldHint: &no},
	}, s.checkpointSandbox)

	mcp.AddTool(ms, &mcp.Tool{
		Name:        ToolRestoreCheckpoint,
		Title:       "Restore a sandbox to a checkpoint",
		Description: `Bring a sandbox back to a checkpoint taken with checkpoint_sandbox: memory, processes and files as they were then. Everything the sandbox did since is lost. The checkpoint stays, so it can be restored again.`,
		Annotations: &mcp.ToolAnnotations{Title: "Restore a checkpoint", DestructiveHint: &yes, OpenWorldHint: &no},
	}, s.restoreCheckpoint)
}
