package containerd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	"google.golang.org/protobuf/proto"
)

// startFlags are the flags containerd passes to `shim start` (every
// generation passes these; newer ones also send BootstrapParams on stdin).
type startFlags struct {
	namespace, id, address string
	debug                  bool
}

// isStartAction says whether the command line is `... start`: the one
// action the shim handles itself, so that it can answer each containerd
// generation in the form that generation reads (pkg/shim's own start
// handler accepts only the bootstrap protocol of containerd 2.3+).
func isStartAction(args []string) (startFlags, bool) {
	fs := flag.NewFlagSet("shim", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var f startFlags
	fs.StringVar(&f.namespace, "namespace", "", "")
	fs.StringVar(&f.id, "id", "", "")
	fs.StringVar(&f.address, "address", "", "")
	fs.BoolVar(&f.debug, "debug", false, "")
	// Flags the shim library knows and start ignores.
	for _, s := range []string{"socket", "debug-socket", "bundle", "publish-binary"} {
		fs.String(s, "", "")
	}
	fs.Bool("v", false, "")
	fs.Bool("version", false, "")
	fs.Bool("info", false, "")
	if err := fs.Parse(args); err != nil {
		return f, false
	}
	return f, fs.Arg(0) == "start"
}

// runStart is `shim start`: start the long-running shim server for the
// container (or find the one already serving it) and print how to reach
// it. Callers of the bootstrap protocol (containerd 2.3+, BootstrapParams
// on stdin) get a BootstrapResult for task API v3; every older containerd
// (1.6, 1.7, 2.0-2.2, which send runtime options or nothing) gets the
// plain socket address, which all of them read as a task API v2 shim.
// Both APIs are served on the one socket.
func runStart(ctx context.Context, f startFlags, stdin io.Reader, stdout io.Writer) error {
	if f.namespace == "" || f.id == "" {
		return errors.New("start: -namespace and -id are required")
	}
	input, err := io.ReadAll(io.LimitReader(stdin, 10<<20))
	if err != nil {
		return fmt.Errorf("start: read stdin: %w", err)
	}
	req := parseStart(f, input, os.Getenv("TTRPC_ADDRESS"))
	ctx = namespaces.WithNamespace(ctx, f.namespace)
	var address string
	if req.socketRoot != "" {
		address, err = shim.CreateSocketAddress(ctx, req.socketRoot, req.grpcAddr, f.id, false)
	} else {
		address, err = shim.SocketAddress(ctx, req.grpcAddr, f.id, false)
	}
	if err != nil {
		return err
	}
	if err := serveNew(address, f.namespace, f.id, req.grpcAddr, req.ttrpcAddr, req.debug); err != nil {
		return err
	}
	answer, err := req.answer(address)
	if err != nil {
		return err
	}
	_, err = stdout.Write(answer)
	return err
}

// startRequest is what a `shim start` caller asked for.
type startRequest struct {
	// bootstrap: the caller sent BootstrapParams (containerd 2.3+).
	bootstrap           bool
	grpcAddr, ttrpcAddr string
	socketRoot          string
	debug               bool
}

// parseStart reads start's stdin. BootstrapParams count only when they
// name this shim's ID and namespace: the runtime options older containerds
// send can happen to decode as a BootstrapParams message too.
func parseStart(f startFlags, input []byte, ttrpcEnv string) startRequest {
	req := startRequest{grpcAddr: f.address, ttrpcAddr: ttrpcEnv, debug: f.debug}
	params := &bootapi.BootstrapParams{}
	if len(input) == 0 || proto.Unmarshal(input, params) != nil ||
		params.GetInstanceID() != f.id || params.GetNamespace() != f.namespace {
		return req
	}
	req.bootstrap = true
	req.grpcAddr = params.GetContainerdGrpcAddress()
	if a := params.GetContainerdTtrpcAddress(); a != "" {
		req.ttrpcAddr = a
	}
	req.debug = params.GetLogLevel() <= bootapi.LogLevel_LOG_LEVEL_DEBUG
	req.socketRoot = params.GetSocketDir()
	return req
}

// answer is start's stdout: a version-3 BootstrapResult (task API v3) for
// a bootstrap caller, else the bare address, which containerd 1.6 to 2.2
// all read as a task API v2 shim.
func (r startRequest) answer(address string) ([]byte, error) {
	if r.bootstrap {
		return proto.Marshal(&bootapi.BootstrapResult{Version: 3, Address: address, Protocol: "ttrpc"})
	}
	return []byte(address), nil
}

// serveNew starts the shim server on address unless one already serves
// it (a second start for the same container finds the first server).
func serveNew(address, ns, id, grpcAddr, ttrpcAddr string, debug bool) error {
	l, err := shim.NewSocket(address)
	if err != nil {
		if !shim.SocketEaddrinuse(err) {
			return fmt.Errorf("create shim socket %s: %w", address, err)
		}
		if shim.CanConnect(address) {
			return writeAddress(address)
		}
		if err := shim.RemoveSocket(address); err != nil {
			return fmt.Errorf("remove stale shim socket %s: %w", address, err)
		}
		if l, err = shim.NewSocket(address); err != nil {
			return fmt.Errorf("create shim socket %s: %w", address, err)
		}
	}
	sock, err := l.File()
	// The server serves the socket from here on: closing this process's
	// listener must not unlink it.
	l.SetUnlinkOnClose(false)
	l.Close()
	if err != nil {
		return err
	}
	defer sock.Close()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	args := []string{"-namespace", ns, "-id", id, "-address", grpcAddr}
	if debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), "TTRPC_ADDRESS="+ttrpcAddr)
	cmd.ExtraFiles = []*os.File{sock} // fd 3: the library serves it
	// The server outlives this start process and containerd's request:
	// its own process group, so a signal to containerd's group misses it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = shim.RemoveSocket(address)
		return fmt.Errorf("start shim server: %w", err)
	}
	go func() { _ = cmd.Wait() }()
	if err := shim.AdjustOOMScore(cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		return fmt.Errorf("shim OOM score: %w", err)
	}
	return writeAddress(address)
}

// writeAddress records the socket in the bundle (the working directory),
// where containerd and later shim processes look for it.
func writeAddress(address string) error {
	tmp := filepath.Join(".", ".address")
	if err := os.WriteFile(tmp, []byte(address), 0o600); err != nil {
		return fmt.Errorf("write shim address: %w", err)
	}
	return os.Rename(tmp, "address")
}
