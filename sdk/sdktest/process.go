package sdktest

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/boxctl/boxctl/sdk"
)

// StartPlugin runs the plugin binary at path as boxctl does (a go-plugin
// process with the sdk's handshake, gRPC and mutual TLS) and returns clients
// of every role; calls to a role the binary does not serve fail. env is
// added to the test's environment. The process is killed when t ends, and
// its log is shown if t failed (as it runs, with go test -v). It is how a
// conformance suite runs against a built plugin rather than an
// implementation in-process (Serve).
//
// Each call starts a new process: the VMM suite's WithReconnect uses it to
// control a VM from a plugin process other than the one that planned it.
func StartPlugin(t testing.TB, path string, env ...string) Clients {
	t.Helper()
	cmd := exec.Command(path)
	cmd.Env = append(os.Environ(), env...)
	logs := &syncBuffer{}
	var out io.Writer = logs
	if testing.Verbose() {
		out = io.MultiWriter(logs, os.Stderr)
	}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake(),
		VersionedPlugins: map[int]plugin.PluginSet{sdk.ProtocolVersion: sdk.ClientPluginSet()},
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		GRPCDialOptions:  sdk.GRPCDialOptions(cmd),
		Logger:           hclog.New(&hclog.LoggerOptions{Name: "plugin", Output: out, Level: hclog.Debug}),
	})
	t.Cleanup(func() {
		client.Kill()
		if t.Failed() && !testing.Verbose() {
			t.Logf("log of %s:\n%s", path, logs)
		}
	})
	rpc, err := client.Client()
	if err != nil {
		t.Fatalf("start plugin %s: %v\n%s", path, err, logs)
	}
	var c Clients
	for _, role := range sdk.Roles() {
		raw, err := rpc.Dispense(role)
		if err != nil {
			t.Fatalf("plugin %s: dispense %s: %v", path, role, err)
		}
		switch role {
		case sdk.RoleVMM:
			c.VMM = raw.(sdk.VMMClient)
		case sdk.RoleDisks:
			c.Disks = raw.(sdk.DiskBackendClient)
		case sdk.RoleSnapshots:
			c.Snapshots = raw.(sdk.SnapshotBackendClient)
		case sdk.RoleImages:
			c.Images = raw.(sdk.ImageSourceClient)
		}
	}
	return c
}

// syncBuffer collects a plugin's log, written from go-plugin's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
