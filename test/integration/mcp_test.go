package integration

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/mcpserver"
)

// TestMCPServerKilledLeavesOnlyPersistedBoxes kills `boxctl mcp` with
// SIGKILL, so that it cleans up nothing itself: its non-persisted box goes
// anyway (tied to the server's process and auto-remove, its monitor stops
// and removes it), and the persisted one keeps running.
func TestMCPServerKilledLeavesOnlyPersistedBoxes(t *testing.T) {
	e := newEnv(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := e.boxctlCmd(context.Background(), "mcp")
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "0"}, nil).Connect(ctx, &mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	create := func(args map[string]any) mcpserver.SandboxInfo {
		t.Helper()
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "create_sandbox", Arguments: args})
		if err != nil || res.IsError {
			t.Fatalf("create_sandbox %v: %v %+v", args, err, res)
		}
		var info mcpserver.SandboxInfo
		raw, _ := json.Marshal(res.StructuredContent)
		if err := json.Unmarshal(raw, &info); err != nil {
			t.Fatal(err)
		}
		return info
	}
	create(map[string]any{"image": testImage, "name": "temp"})
	create(map[string]any{"image": testImage, "name": "kept", "persist": true})
	rt := e.runtime()
	if b := e.info(rt, "temp"); b.Run.Detached || !b.Config.AutoRemove || b.Run.Owner.PID != cmd.Process.Pid {
		t.Fatalf("a non-persisted box must be tied to the server (pid %d) and auto-remove: run %+v auto-remove %v", cmd.Process.Pid, b.Run, b.Config.AutoRemove)
	}
	if b := e.info(rt, "kept"); !b.Run.Detached || b.Config.AutoRemove || b.Config.Labels[mcpserver.LabelPersist] != "1" {
		t.Fatalf("a persisted box must be detached: run %+v config %+v", b.Run, b.Config)
	}
	_ = rt.Close()

	kill9(t, cmd.Process.Pid)
	deadline := time.Now().Add(20 * time.Second)
	var names string
	for time.Now().Before(deadline) {
		names = strings.TrimSpace(e.ok("ls", "-a", "--format", "{{.Name}} {{.Status}}"))
		if names == "kept running" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if names != "kept running" {
		t.Fatalf("after kill -9 of boxctl mcp: boxes %q, want only the persisted one, running", names)
	}
	kept := e.waitStatus("kept", model.StatusRunning, time.Second)
	if kept.Config.Labels[mcpserver.LabelManaged] != "1" {
		t.Fatalf("labels %v", kept.Config.Labels)
	}
	e.ok("rm", "-f", "kept")
}
