package sdktest

import (
	"bytes"
	"os/exec"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/boxctl/boxctl/sdk"
)

// ServeBinary starts the plugin binary at path as boxctl starts plugins
// (go-plugin, gRPC, the sdk's handshake) and returns clients of the named
// roles (sdk.RoleImages, ...; the others stay nil). The process is killed
// when t ends, and its log is shown if t failed. It is how a conformance
// suite runs against a built plugin rather than an implementation
// in-process (Serve).
func ServeBinary(t testing.TB, path string, roles ...string) Clients {
	t.Helper()
	logs := &syncBuffer{}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake(),
		VersionedPlugins: map[int]plugin.PluginSet{sdk.ProtocolVersion: sdk.ClientPluginSet()},
		Cmd:              exec.Command(path),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           hclog.New(&hclog.LoggerOptions{Name: "host", Output: logs, Level: hclog.Debug}),
	})
	t.Cleanup(func() {
		client.Kill()
		if t.Failed() {
			t.Logf("log of %s:\n%s", path, logs)
		}
	})
	rpc, err := client.Client()
	if err != nil {
		t.Fatalf("start %s: %v\n%s", path, err, logs)
	}
	var out Clients
	for _, role := range roles {
		raw, err := rpc.Dispense(role)
		if err != nil {
			t.Fatalf("%s: dispense %s: %v", path, role, err)
		}
		switch role {
		case sdk.RoleVMM:
			out.VMM = raw.(sdk.VMMClient)
		case sdk.RoleDisks:
			out.Disks = raw.(sdk.DiskBackendClient)
		case sdk.RoleSnapshots:
			out.Snapshots = raw.(sdk.SnapshotBackendClient)
		case sdk.RoleImages:
			out.Images = raw.(sdk.ImageSourceClient)
		}
	}
	return out
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
