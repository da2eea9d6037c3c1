package pluginhost_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/boxctl/boxctl/core/pluginhost"
	pluginv1 "github.com/boxctl/boxctl/sdk/proto/v1"
)

// dialEnv makes the test binary, re-run by TestAnotherProcessCannotCallAPlugin,
// call Info on the plugin socket it names and print the outcome.
const dialEnv = "BOXCTL_TEST_DIAL_PLUGIN_SOCKET"

func init() {
	sock := os.Getenv(dialEnv)
	if sock == "" {
		return
	}
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err = pluginv1.NewVMMClient(cc).Info(ctx, &pluginv1.InfoRequest{})
		cancel()
	}
	if err != nil {
		fmt.Println("REFUSED:", err)
	} else {
		fmt.Println("ANSWERED")
	}
	os.Exit(0)
}

// A process other than the plugin's host, even of the same user, gets no
// answer on the plugin's socket: the plugin checks its peer's credentials.
func TestAnotherProcessCannotCallAPlugin(t *testing.T) {
	h, cfg := newHost(t, "")
	vmm, err := h.VMM(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	socks, _ := filepath.Glob(filepath.Join(pluginhost.SocketRoot(cfg.Home), "*", "plugin*"))
	if len(socks) != 1 {
		t.Fatalf("plugin sockets: %v, want one", socks)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), dialEnv+"="+socks[0])
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("dialer: %v\n%s", err, out)
	}
	if !strings.HasPrefix(string(out), "REFUSED:") {
		t.Fatalf("another process called the plugin: %s", out)
	}
	// The host itself still can.
	if _, err := vmm.Info(context.Background()); err != nil {
		t.Fatalf("the host's own call after the refused one: %v", err)
	}
}
