package mcpserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/test/testbin"
)

func TestCappedBufferKeepsTheHeadAndCountsTheRest(t *testing.T) {
	c := &cappedBuffer{limit: 10}
	for _, chunk := range []string{"0123", "456789ab", "cdef"} {
		if n, err := c.Write([]byte(chunk)); n != len(chunk) || err != nil {
			t.Fatalf("Write(%q) = %d, %v: a capped writer must take everything", chunk, n, err)
		}
	}
	if got := c.text(); got != "0123456789" || !c.truncated() || c.total != 16 {
		t.Fatalf("text %q truncated %v total %d", got, c.truncated(), c.total)
	}
	note := truncationNote("stdout", c)
	if !strings.Contains(note, "first 10 of 16 bytes") || !strings.Contains(note, "6 cut") {
		t.Fatalf("note %q does not say how much was cut", note)
	}

	exact := &cappedBuffer{limit: 4}
	_, _ = exact.Write([]byte("abcd"))
	if exact.truncated() || truncationNote("stderr", exact) != "" || exact.text() != "abcd" {
		t.Fatalf("output of exactly the cap is not truncated: %q %v", exact.text(), exact.truncated())
	}
}

func TestCappedBufferDoesNotSplitACharacter(t *testing.T) {
	// "é" is two bytes: a cap of 3 falls inside the second one.
	c := &cappedBuffer{limit: 3}
	_, _ = c.Write([]byte("aéé"))
	if got := c.text(); got != "aé" {
		t.Fatalf("text %q, want the whole characters only", got)
	}
	c = &cappedBuffer{limit: 2}
	_, _ = c.Write([]byte("aéé"))
	if got := c.text(); got != "a" {
		t.Fatalf("text %q, want %q", got, "a")
	}
	// Binary output stays valid UTF-8 in the JSON result.
	c = &cappedBuffer{limit: 100}
	_, _ = c.Write([]byte{'x', 0xff, 0xfe, 'y'})
	if got := c.text(); !utf8.ValidString(got) || !strings.HasPrefix(got, "x") || !strings.HasSuffix(got, "y") {
		t.Fatalf("binary output %q", got)
	}
}

func TestExecArgv(t *testing.T) {
	argv, err := execArgv(RunCommandInput{Command: "echo hi | wc -c"})
	if err != nil || strings.Join(argv, "\x00") != "/bin/sh\x00-c\x00echo hi | wc -c" {
		t.Fatalf("shell command: %q %v", argv, err)
	}
	argv, err = execArgv(RunCommandInput{Argv: []string{"ls", "-la", "/a b"}})
	if err != nil || len(argv) != 3 || argv[2] != "/a b" {
		t.Fatalf("argv: %q %v", argv, err)
	}
	for name, in := range map[string]RunCommandInput{
		"neither":      {},
		"blank":        {Command: "  "},
		"both":         {Command: "ls", Argv: []string{"ls"}},
		"empty argv 0": {Argv: []string{"", "x"}},
	} {
		if _, err := execArgv(in); !errors.Is(err, core.ErrInvalidArgument) {
			t.Errorf("%s: err %v, want an invalid-argument error", name, err)
		}
	}
}

func TestTimeoutDefaultAndMaximum(t *testing.T) {
	s := &server{limits: withDefaults(Limits{DefaultTimeout: 5 * time.Second, MaxTimeout: time.Minute})}
	for _, c := range []struct {
		in   float64
		want time.Duration
	}{{0, 5 * time.Second}, {0.5, 500 * time.Millisecond}, {60, time.Minute}} {
		if got, err := s.timeout(c.in); err != nil || got != c.want {
			t.Errorf("timeout(%g) = %s, %v; want %s", c.in, got, err, c.want)
		}
	}
	for _, bad := range []float64{-1, 61} {
		if _, err := s.timeout(bad); !errors.Is(err, core.ErrInvalidArgument) {
			t.Errorf("timeout(%g): err %v, want refused", bad, err)
		}
	}
	// A default above the maximum is brought down to it.
	if l := withDefaults(Limits{DefaultTimeout: time.Hour, MaxTimeout: time.Minute}); l.DefaultTimeout != time.Minute {
		t.Errorf("default %s above max %s", l.DefaultTimeout, l.MaxTimeout)
	}
}

func TestCheckPath(t *testing.T) {
	if err := checkPath("path", "/etc/os-release"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"", "etc/passwd", "./x", "~/x", "/a\x00b"} {
		err := checkPath("path", p)
		if !errors.Is(err, core.ErrInvalidArgument) {
			t.Errorf("checkPath(%q) = %v, want refused", p, err)
		}
	}
	if err := checkPath("path", "notes.txt"); !strings.Contains(err.Error(), "/tmp/notes.txt") {
		t.Errorf("the message should show an absolute example: %v", err)
	}
}

func TestEncodeContent(t *testing.T) {
	if c, e := encodeContent([]byte("héllo\n"), encodingText, false); c != "héllo\n" || e != encodingText {
		t.Fatalf("text: %q %s", c, e)
	}
	if c, e := encodeContent([]byte{0, 0xff, 1}, encodingText, false); c != "AP8B" || e != encodingBase64 {
		t.Fatalf("binary falls back to base64: %q %s", c, e)
	}
	if c, e := encodeContent([]byte("hi"), encodingBase64, false); c != "aGk=" || e != encodingBase64 {
		t.Fatalf("base64 asked: %q %s", c, e)
	}
	// A read cut through "é" is still text.
	if _, e := encodeContent([]byte("abc\xc3"), encodingText, true); e != encodingText {
		t.Fatalf("a truncated read ending in half a character became %s", e)
	}
}

func TestParseListing(t *testing.T) {
	line := func(f ...string) string { return strings.Join(f, "\x1f") + "\n" }
	out := line("directory", "drwxr-xr-x", "4096", "root", "root", "1700000000", "etc", "'etc'") +
		line("symbolic link", "lrwxrwxrwx", "7", "root", "root", "1700000000", "sh", "'sh' -> 'busybox'") +
		line("regular file", "-rw-r--r--", "12", "guest", "users", "1700000000", "a|b.txt", "'a|b.txt'") +
		line("regular empty file", "-rw-------", "0", "root", "root", "1700000000", "empty", "'empty'") +
		"garbage\n"
	entries, truncated := parseListing(out, 10)
	if truncated || len(entries) != 4 {
		t.Fatalf("entries %+v truncated %v", entries, truncated)
	}
	if e := entries[1]; e.Type != "symlink" || e.LinkTarget != "busybox" || e.Name != "sh" {
		t.Fatalf("symlink: %+v", e)
	}
	if e := entries[2]; e.Name != "a|b.txt" || e.Size != 12 || e.Owner != "guest" || e.Group != "users" || e.Type != "file" || e.Modified != "2023-11-14T22:13:20Z" {
		t.Fatalf("file with a | in its name: %+v", e)
	}
	if e := entries[3]; e.Type != "file" || e.Mode != "-rw-------" {
		t.Fatalf("empty file: %+v", e)
	}
	if entries, truncated := parseListing(out, 2); !truncated || len(entries) != 2 {
		t.Fatalf("limit 2: %d entries, truncated %v", len(entries), truncated)
	}
}

// session connects a client to a server on a runtime over an empty home
// (no plugins: only what needs no box can succeed).
func session(t *testing.T) *mcp.ClientSession {
	t.Helper()
	ctx := context.Background()
	cfg := config.Default()
	cfg.Home = testbin.ShortTempDir(t)
	rt, err := core.Open(ctx, core.WithConfig(cfg), core.WithLogger(hclog.NewNullLogger(), nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Close() })
	st, ct := mcp.NewInMemoryTransports()
	srv := New(rt, Options{SessionID: "unit"})
	ss, err := srv.Connect(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ss.Close() })
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "0"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cs.Close() })
	return cs
}

func TestToolsHaveDescriptionsAndSchemas(t *testing.T) {
	cs := session(t)
	res, err := cs.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{ToolCreateSandbox: true, ToolListSandboxes: true, ToolRemoveSandbox: true, ToolRunCommand: true,
		ToolReadFile: true, ToolWriteFile: true, ToolListFiles: true, ToolForkSandbox: true, ToolCheckpointSandbox: true, ToolRestoreCheckpoint: true}
	for _, tool := range res.Tools {
		if !want[tool.Name] {
			t.Errorf("unexpected tool %s", tool.Name)
		}
		delete(want, tool.Name)
		if len(tool.Description) < 60 {
			t.Errorf("%s: description %q is too thin to teach a model", tool.Name, tool.Description)
		}
		schema, _ := json.Marshal(tool.InputSchema)
		var s struct {
			Type       string                     `json:"type"`
			Properties map[string]json.RawMessage `json:"properties"`
		}
		if err := json.Unmarshal(schema, &s); err != nil || s.Type != "object" {
			t.Errorf("%s: input schema %s", tool.Name, schema)
		}
		for name, p := range s.Properties {
			if !bytes.Contains(p, []byte(`"description"`)) && name != "all" {
				t.Errorf("%s: argument %s has no description: %s", tool.Name, name, p)
			}
		}
	}
	if len(want) > 0 {
		t.Errorf("missing tools: %v", want)
	}
}

// call calls a tool and returns its text and whether it is an error.
func call(t *testing.T, cs *mcp.ClientSession, name string, args map[string]any) (string, bool) {
	t.Helper()
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("%s: protocol error %v (tool errors must be results)", name, err)
	}
	var b strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String(), res.IsError
}

func TestBadArgumentsAreToolErrorsThatSayWhatToDo(t *testing.T) {
	cs := session(t)
	for _, c := range []struct {
		tool string
		args map[string]any
		want string
	}{
		{ToolRunCommand, map[string]any{"sandbox": "b"}, `pass "command"`},
		{ToolRunCommand, map[string]any{"sandbox": "b", "command": "ls", "argv": []string{"ls"}}, "not both"},
		{ToolRunCommand, map[string]any{"sandbox": "b", "command": "ls", "timeout_seconds": 1e6}, "above the maximum"},
		{ToolRunCommand, map[string]any{"sandbox": "b", "command": "ls", "working_dir": "tmp"}, "not an absolute path"},
		{ToolRunCommand, map[string]any{"sandbox": "", "command": "ls"}, "no sandbox given"},
		{ToolRunCommand, map[string]any{"sandbox": "nosuchbox", "command": "ls"}, "list_sandboxes"},
		{ToolReadFile, map[string]any{"sandbox": "b", "path": "etc/passwd"}, "must start with \"/\""},
		{ToolReadFile, map[string]any{"sandbox": "b", "path": "/etc/passwd", "encoding": "utf-16"}, `use "text" or "base64"`},
		{ToolWriteFile, map[string]any{"sandbox": "b", "path": "/x", "content": "%%%", "encoding": "base64"}, "not valid base64"},
		{ToolWriteFile, map[string]any{"sandbox": "b", "path": "/x", "content": "x", "mode": "rwx"}, "octal"},
		{ToolWriteFile, map[string]any{"sandbox": "b", "path": "/", "content": "x"}, "root directory"},
		{ToolWriteFile, map[string]any{"sandbox": "b", "path": "/x", "content": strings.Repeat("x", DefaultLimits.FileBytes+1)}, "write it in parts"},
		{ToolListFiles, map[string]any{"sandbox": "b", "path": "relative"}, "not an absolute path"},
		{ToolCreateSandbox, map[string]any{"image": "alpine", "memory": "lots"}, "512MiB"},
		{ToolCreateSandbox, map[string]any{"image": "alpine", "cpus": 1000}, "1 to 256"},
		{ToolForkSandbox, map[string]any{"sandbox": "b", "count": 100}, "1 to 16"},
		{ToolRemoveSandbox, map[string]any{"sandbox": "nosuchbox"}, "list_sandboxes"},
	} {
		text, isErr := call(t, cs, c.tool, c.args)
		if !isErr || !strings.Contains(text, c.want) {
			t.Errorf("%s %v: error %v %q, want a tool error containing %q", c.tool, c.args, isErr, text, c.want)
		}
	}
	// A missing required argument is refused by the schema.
	if text, isErr := call(t, cs, ToolCreateSandbox, map[string]any{}); !isErr || !strings.Contains(text, "image") {
		t.Errorf("create_sandbox without image: %v %q", isErr, text)
	}
}

func TestListSandboxesOfAnEmptyHome(t *testing.T) {
	cs := session(t)
	text, isErr := call(t, cs, ToolListSandboxes, nil)
	if isErr || !strings.Contains(text, `"sandboxes":[]`) {
		t.Fatalf("list: %v %s", isErr, text)
	}
}
