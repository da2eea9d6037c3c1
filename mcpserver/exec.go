package mcpserver

import (
	"context"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/boxctl/boxctl/core"
)

// RunCommandInput is run_command's arguments.
type RunCommandInput struct {
	Sandbox        string   `json:"sandbox" jsonschema:"the sandbox's name or ID"`
	Command        string   `json:"command,omitempty" jsonschema:"a shell command line, run with /bin/sh -c (pipes, &&, redirections and globs work). Give this or argv"`
	Argv           []string `json:"argv,omitempty" jsonschema:"the program and its arguments, run without a shell (for images without /bin/sh, or arguments you do not want to quote). Give this or command"`
	TimeoutSeconds float64  `json:"timeout_seconds,omitempty" jsonschema:"kill the command after this many seconds (default and maximum: see the server instructions)"`
	Stdin          string   `json:"stdin,omitempty" jsonschema:"text written to the command's standard input (default: none)"`
	Env            []string `json:"env,omitempty" jsonschema:"extra environment variables KEY=VALUE for this command"`
	WorkingDir     string   `json:"working_dir,omitempty" jsonschema:"absolute directory to run in (default: the image's working directory)"`
	User           string   `json:"user,omitempty" jsonschema:"user to run as: name, uid or uid:gid (default: the image's user)"`
}

// RunCommandOutput is run_command's result.
type RunCommandOutput struct {
	ExitCode int    `json:"exit_code" jsonschema:"the command's exit status; 128+N when killed by signal N, 127 when the program was not found"`
	TimedOut bool   `json:"timed_out" jsonschema:"the command was killed because it ran past its timeout"`
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	// Truncation: the totals say how much the command wrote.
	StdoutTruncated bool    `json:"stdout_truncated"`
	StderrTruncated bool    `json:"stderr_truncated"`
	StdoutBytes     int64   `json:"stdout_bytes" jsonschema:"how many bytes the command wrote to stdout (also when truncated)"`
	StderrBytes     int64   `json:"stderr_bytes" jsonschema:"how many bytes the command wrote to stderr (also when truncated)"`
	DurationSeconds float64 `json:"duration_seconds"`
	Note            string  `json:"note,omitempty" jsonschema:"what was cut or why the command ended, when that needs saying"`
}

// cappedBuffer keeps the first limit bytes written to it and counts the
// rest, so a command that floods its output cannot flood the model's
// context (or this process's memory).
type cappedBuffer struct {
	limit int
	buf   []byte
	total int64
}

func (c *cappedBuffer) Write(p []byte) (int, error) {
	c.total += int64(len(p))
	if room := c.limit - len(c.buf); room > 0 {
		c.buf = append(c.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (c *cappedBuffer) truncated() bool { return c.total > int64(len(c.buf)) }

// text is what was kept, as valid UTF-8: a multi-byte character the cap
// cut in half is dropped, other invalid bytes become U+FFFD.
func (c *cappedBuffer) text() string {
	b := c.buf
	if c.truncated() {
		for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
			if utf8.RuneStart(b[i]) {
				if !utf8.FullRune(b[i:]) {
					b = b[:i]
				}
				break
			}
		}
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

// truncationNote says what a capped stream left out.
func truncationNote(name string, c *cappedBuffer) string {
	if !c.truncated() {
		return ""
	}
	return fmt.Sprintf("%s truncated: showing the first %d of %d bytes (%d cut); redirect to a file and read parts of it (head, tail, grep) to see the rest", name, len(c.buf), c.total, c.total-int64(len(c.buf)))
}

// execArgv returns the command to run: argv as given, or the shell
// command line under /bin/sh -c.
func execArgv(in RunCommandInput) ([]string, error) {
	hasCmd, hasArgv := strings.TrimSpace(in.Command) != "", len(in.Argv) > 0
	switch {
	case hasCmd && hasArgv:
		return nil, fmt.Errorf(`give either "command" (a shell command line) or "argv" (a program and its arguments), not both: %w`, core.ErrInvalidArgument)
	case hasCmd:
		return []string{"/bin/sh", "-c", in.Command}, nil
	case hasArgv:
		if in.Argv[0] == "" {
			return nil, fmt.Errorf(`"argv"[0] is empty: it must name the program to run: %w`, core.ErrInvalidArgument)
		}
		return in.Argv, nil
	}
	return nil, fmt.Errorf(`no command given: pass "command" (e.g. "ls -la /tmp") or "argv" (e.g. ["ls", "-la", "/tmp"]): %w`, core.ErrInvalidArgument)
}

// timeout returns how long the command may run.
func (s *server) timeout(seconds float64) (time.Duration, error) {
	switch {
	case seconds < 0:
		return 0, fmt.Errorf(`"timeout_seconds" %g is negative: give a number of seconds up to %g, or leave it out for %g: %w`, seconds, s.limits.MaxTimeout.Seconds(), s.limits.DefaultTimeout.Seconds(), core.ErrInvalidArgument)
	case seconds == 0:
		return s.limits.DefaultTimeout, nil
	case seconds > s.limits.MaxTimeout.Seconds():
		return 0, fmt.Errorf(`"timeout_seconds" %g is above the maximum of %g: split the work, or run it in the background (nohup CMD > /tmp/log 2>&1 &) and poll the log: %w`, seconds, s.limits.MaxTimeout.Seconds(), core.ErrInvalidArgument)
	}
	return time.Duration(seconds * float64(time.Second)), nil
}

func (s *server) runCommand(ctx context.Context, _ *mcp.CallToolRequest, in RunCommandInput) (*mcp.CallToolResult, RunCommandOutput, error) {
	argv, err := execArgv(in)
	if err != nil {
		return nil, RunCommandOutput{}, err
	}
	timeout, err := s.timeout(in.TimeoutSeconds)
	if err != nil {
		return nil, RunCommandOutput{}, err
	}
	if in.WorkingDir != "" {
		if err := checkPath("working_dir", in.WorkingDir); err != nil {
			return nil, RunCommandOutput{}, err
		}
	}
	b, err := s.box(ctx, in.Sandbox)
	if err != nil {
		return nil, RunCommandOutput{}, toolError(err)
	}
	stdout := &cappedBuffer{limit: s.limits.OutputBytes}
	stderr := &cappedBuffer{limit: s.limits.OutputBytes}
	opts := core.ExecOptions{
		Argv: argv, Env: in.Env, WorkingDir: in.WorkingDir, User: in.User,
		Stdout: stdout, Stderr: stderr, Timeout: timeout,
	}
	if in.Stdin != "" {
		opts.Stdin = strings.NewReader(in.Stdin)
	}
	start := time.Now()
	res, err := s.rt.Exec(ctx, b.ID, opts)
	if err != nil {
		return nil, RunCommandOutput{}, toolError(err)
	}
	s.log.Debug("ran command", "box", b.Name, "argv", argv, "exit", res.ExitCode, "timed_out", res.TimedOut)
	out := RunCommandOutput{
		ExitCode: res.ExitCode, TimedOut: res.TimedOut,
		Stdout: stdout.text(), Stderr: stderr.text(),
		StdoutTruncated: stdout.truncated(), StderrTruncated: stderr.truncated(),
		StdoutBytes: stdout.total, StderrBytes: stderr.total,
		DurationSeconds: time.Since(start).Round(time.Millisecond).Seconds(),
	}
	if res.Duration > 0 {
		out.DurationSeconds = res.Duration.Round(time.Millisecond).Seconds()
	}
	var notes []string
	if res.TimedOut {
		notes = append(notes, fmt.Sprintf("the command was killed after its timeout of %s; pass a larger timeout_seconds (up to %g) or run it in the background", timeout, s.limits.MaxTimeout.Seconds()))
	}
	for _, n := range []string{truncationNote("stdout", stdout), truncationNote("stderr", stderr)} {
		if n != "" {
			notes = append(notes, n)
		}
	}
	out.Note = strings.Join(notes, "; ")
	return nil, out, nil
}
