package sdktest

import (
	"io"
	"os"
	"os/exec"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/boxctl/boxctl/sdk"
)

// StartPlugin runs the plugin binary at path as boxctl does (a go-plugin
// process with the sdk's handshake, gRPC and mutual TLS) and returns clients
// of every role; calls to a role the binary does not serve fail. env is
// added to the test's environment. The process ends when t ends.
//
// Each call starts a new process: the VMM suite's WithReconnect uses it to
// control a VM from a plugin process other than the one that planned it.
func StartPlugin(t testing.TB, path string, env ...string) Clients {
	t.Helper()
	cmd := exec.Command(path)
	cmd.Env = append(os.Environ(), env...)
	var out io.Writer = io.Discard
	if testing.Verbose() {
		out = os.Stderr
	}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake(),
		VersionedPlugins: map[int]plugin.PluginSet{sdk.ProtocolVersion: sdk.ClientPluginSet()},
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		Logger:           hclog.New(&hclog.LoggerOptions{Name: "plugin", Output: out, Level: hclog.Warn}),
	})
	t.Cleanup(client.Kill)
	rpc, err := client.Client()
	if err != nil {
		t.Fatalf("start plugin %s: %v", path, err)
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
