package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/boxctl/boxctl/mcpserver"
)

// mcpSession is `boxctl mcp` driven by the go-sdk's client over stdio.
type mcpSession struct {
	t      *testing.T
	cmd    *exec.Cmd
	cs     *mcp.ClientSession
	stderr *lockedBuffer
}

// lockedBuffer is a bytes.Buffer the child's stderr copier and the test
// may use at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (e *env) mcp(args ...string) *mcpSession {
	e.t.Helper()
	cmd := e.command(context.Background(), append([]string{"mcp"}, args...)...)
	s := &mcpSession{t: e.t, cmd: cmd, stderr: &lockedBuffer{}}
	cmd.Stderr = s.stderr
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client := mcp.NewClient(&mcp.Implementation{Name: "boxctl-e2e", Version: "0"}, nil)
	// Cleanup at exit removes boxes: give it time before the transport
	// resorts to SIGTERM.
	cs, err := client.Connect(ctx, &mcp.CommandTransport{Command: cmd, TerminateDuration: 2 * time.Minute}, nil)
	if err != nil {
		e.t.Fatalf("connect to boxctl mcp: %v\nstderr: %s", err, s.stderr)
	}
	s.cs = cs
	e.t.Cleanup(func() { _ = cs.Close() })
	return s
}

// call calls a tool, decodes its structured result into out (when not
// nil) and returns the result's text and whether it is a tool error.
func (s *mcpSession) call(name string, args map[string]any, out any) (string, bool) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	res, err := s.cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
	s.t.Logf("%s: %s", name, time.Since(start).Round(time.Millisecond))
	if err != nil {
		s.t.Fatalf("%s: %v\nstderr: %s", name, err, s.stderr)
	}
	var text strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			text.WriteString(tc.Text)
		}
	}
	if out != nil && !res.IsError {
		raw, _ := json.Marshal(res.StructuredContent)
		if err := json.Unmarshal(raw, out); err != nil {
			s.t.Fatalf("%s: decode %s: %v", name, raw, err)
		}
	}
	return text.String(), res.IsError
}

// ok calls a tool that must succeed.
func (s *mcpSession) ok(name string, args map[string]any, out any) {
	s.t.Helper()
	if text, isErr := s.call(name, args, out); isErr {
		s.t.Fatalf("%s %v: tool error: %s\nstderr: %s", name, args, text, s.stderr)
	}
}

// end closes stdin, as an MCP client does, and waits for the server's
// exit.
func (s *mcpSession) end() {
	s.t.Helper()
	if err := s.cs.Close(); err != nil {
		s.t.Fatalf("boxctl mcp did not exit cleanly: %v\nstderr: %s", err, s.stderr)
	}
}

func guestKernelRelease(t *testing.T, guest string) string {
	t.Helper()
	env, err := os.ReadFile(filepath.Join(guest, "guest.env"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^KERNEL_RELEASE=(\S+)`).FindSubmatch(env)
	if m == nil {
		t.Fatalf("no KERNEL_RELEASE in %s/guest.env", guest)
	}
	return string(m[1])
}

func (e *env) boxNames() []string {
	e.t.Helper()
	return strings.Fields(e.ok("ls", "-a", "--format", "{{.Name}}"))
}

// TestMCPSession drives `boxctl mcp` as an agent would: one sandbox (and a
// fork of it) in a first session, then a session that ends with a live
// sandbox and a persisted one. Three VMs in all (the fork is restored from
// memory, not booted).
func TestMCPSession(t *testing.T) {
	e := newEnv(t)
	s := e.mcp()

	t.Run("tools", func(t *testing.T) {
		res, err := s.cs.ListTools(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"create_sandbox", "list_sandboxes", "remove_sandbox", "run_command", "read_file", "write_file", "list_files", "fork_sandbox", "checkpoint_sandbox", "restore_checkpoint"}
		got := map[string]*mcp.Tool{}
		for _, tool := range res.Tools {
			got[tool.Name] = tool
		}
		for _, name := range want {
			tool := got[name]
			if tool == nil {
				t.Errorf("no tool %s (have %v)", name, res.Tools)
				continue
			}
			if tool.Description == "" || tool.InputSchema == nil {
				t.Errorf("%s: description %q, input schema %v", name, tool.Description, tool.InputSchema)
			}
		}
	})

	var box mcpserver.SandboxInfo
	s.ok("create_sandbox", map[string]any{"image": e.image, "name": "agent"}, &box)
	if box.Name != "agent" || len(box.ID) != 32 || box.Status != "running" || box.Persist {
		t.Fatalf("create_sandbox returned %+v", box)
	}
	run := func(t *testing.T, args map[string]any) mcpserver.RunCommandOutput {
		t.Helper()
		args["sandbox"] = "agent"
		var out mcpserver.RunCommandOutput
		s.ok("run_command", args, &out)
		return out
	}

	t.Run("uname is the guest's", func(t *testing.T) {
		out := run(t, map[string]any{"command": "uname -a"})
		guest := guestKernelRelease(t, e.guest)
		host, err := exec.Command("uname", "-r").Output()
		if err != nil {
			t.Fatal(err)
		}
		if out.ExitCode != 0 || !strings.HasPrefix(out.Stdout, "Linux ") || !strings.Contains(out.Stdout, " "+guest+" ") {
			t.Fatalf("uname -a: %+v; want the guest kernel %s", out, guest)
		}
		if h := strings.TrimSpace(string(host)); h != guest && strings.Contains(out.Stdout, " "+h+" ") {
			t.Fatalf("uname -a shows the host's kernel %s: %q", h, out.Stdout)
		}
	})

	t.Run("exit code stderr stdin argv", func(t *testing.T) {
		out := run(t, map[string]any{"command": "echo out; echo err >&2; exit 3"})
		if out.ExitCode != 3 || out.Stdout != "out\n" || out.Stderr != "err\n" || out.TimedOut {
			t.Fatalf("got %+v", out)
		}
		out = run(t, map[string]any{"argv": []string{"cat"}, "stdin": "fed through stdin"})
		if out.ExitCode != 0 || out.Stdout != "fed through stdin" {
			t.Fatalf("stdin: %+v", out)
		}
		out = run(t, map[string]any{"argv": []string{"/no/such/program"}})
		if out.ExitCode != 127 {
			t.Fatalf("missing program: %+v", out)
		}
	})

	t.Run("files", func(t *testing.T) {
		var w mcpserver.WriteFileOutput
		s.ok("write_file", map[string]any{"sandbox": "agent", "path": "/work/dir/notes.txt", "content": "héllo\nworld\n"}, &w)
		if w.Bytes != len("héllo\nworld\n") || w.Path != "/work/dir/notes.txt" {
			t.Fatalf("write_file: %+v", w)
		}
		var r mcpserver.ReadFileOutput
		s.ok("read_file", map[string]any{"sandbox": "agent", "path": "/work/dir/notes.txt"}, &r)
		if r.Content != "héllo\nworld\n" || r.Encoding != "text" || r.Truncated || r.Size != int64(w.Bytes) {
			t.Fatalf("read_file: %+v", r)
		}
		if out := run(t, map[string]any{"command": "cat /work/dir/notes.txt | wc -l"}); strings.TrimSpace(out.Stdout) != "2" {
			t.Fatalf("the written file, seen from a command: %+v", out)
		}
		bin := []byte{0, 1, 2, 0xff, 0xfe, '\n'}
		s.ok("write_file", map[string]any{"sandbox": "agent", "path": "/work/run.sh", "content": "#!/bin/sh\necho script ran\n", "mode": "0755"}, nil)
		s.ok("write_file", map[string]any{"sandbox": "agent", "path": "/work/blob", "content": base64.StdEncoding.EncodeToString(bin), "encoding": "base64"}, nil)
		s.ok("read_file", map[string]any{"sandbox": "agent", "path": "/work/blob"}, &r)
		if got, _ := base64.StdEncoding.DecodeString(r.Content); r.Encoding != "base64" || !bytes.Equal(got, bin) {
			t.Fatalf("binary file: %+v", r)
		}
		if out := run(t, map[string]any{"command": "/work/run.sh"}); out.Stdout != "script ran\n" {
			t.Fatalf("mode 0755: %+v", out)
		}
		var l mcpserver.ListFilesOutput
		s.ok("list_files", map[string]any{"sandbox": "agent", "path": "/work"}, &l)
		kinds := map[string]mcpserver.FileEntry{}
		for _, f := range l.Entries {
			kinds[f.Name] = f
		}
		if len(l.Entries) != 3 || kinds["dir"].Type != "directory" || kinds["blob"].Size != int64(len(bin)) || kinds["run.sh"].Mode != "-rwxr-xr-x" || kinds["blob"].Owner != "root" {
			t.Fatalf("list_files /work: %+v", l)
		}
		start := time.Now()
		s.ok("list_files", map[string]any{"sandbox": "agent", "path": "/bin"}, &l)
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("list_files of busybox's /bin (%d entries) took %s", len(l.Entries), d)
		}
		var link bool
		for _, f := range l.Entries {
			link = link || (f.Name == "sh" && f.Type == "symlink" && f.LinkTarget != "")
		}
		if !link {
			t.Errorf("/bin/sh is a busybox symlink, list_files shows %+v", l.Entries)
		}
		for _, c := range []struct {
			tool string
			args map[string]any
			want string
		}{
			{"read_file", map[string]any{"sandbox": "agent", "path": "work/blob"}, "not an absolute path"},
			{"read_file", map[string]any{"sandbox": "agent", "path": "/work/nothing"}, "no such file"},
			{"read_file", map[string]any{"sandbox": "agent", "path": "/work"}, "list_files"},
			{"list_files", map[string]any{"sandbox": "agent", "path": "/nothing/here"}, "no such file"},
		} {
			if text, isErr := s.call(c.tool, c.args, nil); !isErr || !strings.Contains(text, c.want) {
				t.Errorf("%s %v: %v %q, want an error saying %q", c.tool, c.args, isErr, text, c.want)
			}
		}
	})

	t.Run("timeout", func(t *testing.T) {
		start := time.Now()
		out := run(t, map[string]any{"command": "echo started; sleep 30; echo never", "timeout_seconds": 1})
		if !out.TimedOut || out.ExitCode < 128 || out.Stdout != "started\n" || !strings.Contains(out.Note, "timeout") {
			t.Fatalf("got %+v", out)
		}
		if d := time.Since(start); d > 15*time.Second {
			t.Fatalf("a 1 s timeout took %s", d)
		}
	})

	t.Run("output truncation", func(t *testing.T) {
		out := run(t, map[string]any{"command": "head -c 200000 /dev/zero | tr '\\0' x; echo tail >&2"})
		limit := mcpserver.DefaultLimits.OutputBytes
		if !out.StdoutTruncated || out.StdoutBytes != 200000 || len(out.Stdout) != limit || strings.Trim(out.Stdout, "x") != "" {
			t.Fatalf("stdout: truncated %v, %d bytes kept of %d", out.StdoutTruncated, len(out.Stdout), out.StdoutBytes)
		}
		if out.StderrTruncated || out.Stderr != "tail\n" {
			t.Fatalf("stderr: %q truncated %v", out.Stderr, out.StderrTruncated)
		}
		if !strings.Contains(out.Note, "first 65536 of 200000 bytes") {
			t.Fatalf("note %q", out.Note)
		}
	})

	t.Run("checkpoint and fork", func(t *testing.T) {
		var cp mcpserver.CheckpointSandboxOutput
		s.ok("checkpoint_sandbox", map[string]any{"sandbox": "agent", "name": "ready"}, &cp)
		if cp.Checkpoint != "ready" || cp.SizeBytes == 0 {
			t.Fatalf("checkpoint: %+v", cp)
		}
		var fk mcpserver.ForkSandboxOutput
		s.ok("fork_sandbox", map[string]any{"sandbox": "agent", "name": "agent-fork"}, &fk)
		if len(fk.Forks) != 1 || fk.Forks[0].Name != "agent-fork" || fk.Forks[0].Status != "running" {
			t.Fatalf("fork: %+v", fk)
		}
		var out mcpserver.RunCommandOutput
		s.ok("run_command", map[string]any{"sandbox": "agent-fork", "command": "cat /work/dir/notes.txt"}, &out)
		if out.Stdout != "héllo\nworld\n" {
			t.Fatalf("the fork does not have the source's files: %+v", out)
		}
		var ls mcpserver.ListSandboxesOutput
		s.ok("list_sandboxes", nil, &ls)
		if len(ls.Sandboxes) != 2 || ls.Sandboxes[0].Session == "" || ls.Sandboxes[0].Session != ls.Sandboxes[1].Session {
			t.Fatalf("list_sandboxes: the fork belongs to the session too: %+v", ls)
		}
	})

	t.Run("not a box of the server", func(t *testing.T) {
		e.ok("create", "--name", "cli-box", e.image)
		defer e.ok("rm", "cli-box")
		if text, isErr := s.call("run_command", map[string]any{"sandbox": "cli-box", "command": "true"}, nil); !isErr || !strings.Contains(text, "not created through MCP") {
			t.Fatalf("a CLI box: %v %q", isErr, text)
		}
	})

	var rm mcpserver.RemoveSandboxOutput
	s.ok("remove_sandbox", map[string]any{"sandbox": "agent"}, &rm)
	if rm.Removed != "agent" {
		t.Fatalf("remove_sandbox: %+v", rm)
	}
	if text, isErr := s.call("run_command", map[string]any{"sandbox": "agent", "command": "true"}, nil); !isErr || !strings.Contains(text, "list_sandboxes") {
		t.Fatalf("a removed sandbox: %v %q", isErr, text)
	}
	// The fork is still running: ending the session removes it.
	s.end()
	if names := e.boxNames(); len(names) != 0 {
		t.Fatalf("boxes left after the first session: %v\nstderr: %s", names, s.stderr)
	}

	t.Run("session end removes all but persisted boxes", func(t *testing.T) {
		s := e.mcp()
		var tmp, kept mcpserver.SandboxInfo
		s.ok("create_sandbox", map[string]any{"image": e.image, "name": "scratch", "network": "none"}, &tmp)
		s.ok("create_sandbox", map[string]any{"image": e.image, "name": "kept", "persist": true, "memory": "256MiB"}, &kept)
		if tmp.Persist || !kept.Persist || kept.MemoryMiB != 256 {
			t.Fatalf("created %+v and %+v", tmp, kept)
		}
		s.ok("write_file", map[string]any{"sandbox": "kept", "path": "/root/state", "content": "still here"}, nil)
		s.end()
		if names := e.boxNames(); len(names) != 1 || names[0] != "kept" {
			t.Fatalf("after the session: boxes %v, want only the persisted one", names)
		}
		if st := strings.TrimSpace(e.ok("ls", "-a", "--format", "{{.Status}}")); st != "running" {
			t.Fatalf("the persisted box is %s after the session, want running", st)
		}
		labels := strings.TrimSpace(e.ok("ls", "-a", "--format", `{{index .Config.Labels "boxctl.mcp"}} {{index .Config.Labels "boxctl.mcp.session"}} {{index .Config.Labels "boxctl.mcp.persist"}}`))
		if f := strings.Fields(labels); len(f) != 3 || f[0] != "1" || f[1] != kept.Session || f[2] != "1" {
			t.Fatalf("labels of the persisted box: %q (session %q)", labels, kept.Session)
		}
		if out := e.ok("exec", "kept", "--", "cat", "/root/state"); out != "still here" {
			t.Fatalf("persisted box's file: %q", out)
		}
		e.ok("rm", "-f", "kept")
	})

	t.Run("SIGTERM ends the server", func(t *testing.T) {
		s := e.mcp()
		s.ok("list_sandboxes", nil, nil)
		if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- s.cs.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("boxctl mcp still runs 30 s after SIGTERM\nstderr: %s", s.stderr)
		}
		_ = s.cs.Close()
		if st := s.cmd.ProcessState; st == nil || !st.Success() {
			t.Fatalf("exit after SIGTERM: %v\nstderr: %s", st, s.stderr)
		}
	})
	if names := e.boxNames(); len(names) != 0 {
		t.Fatalf("boxes left: %v", names)
	}
}
