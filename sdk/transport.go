package sdk

import (
	"os"
	"os/exec"

	"google.golang.org/grpc"
)

// The plugin connection is gRPC over a unix socket between two processes
// of one machine. gRPC's defaults are tuned for networks, and one of them
// costs a local call dearly: dynamic flow-control windows. To size its
// window, each end estimates the bandwidth-delay product with an HTTP/2
// PING sent when data arrives, so a unary call becomes a call plus a ping
// exchange: an extra write and wake-ups in both processes, for a window
// that on a local socket never needs to grow. A fixed window turns the
// estimate off. 4 MiB keeps a stream of large messages (Export, image
// layers) from waiting for window updates: at a local socket's latency it
// allows far more than a disk delivers.
//
// The server also keeps a few standing goroutines for incoming calls
// instead of starting one per call; gRPC still starts one when all of them
// are busy, so long calls do not queue behind each other.
//
// Who may connect is checked with the kernel's peer credentials rather
// than TLS (peercred.go). bench/rpc measures all of it.
const transportWindow = 4 << 20

// serverWorkers is how many standing goroutines serve incoming calls.
const serverWorkers = 4

// GRPCDialOptions are the settings a host dials the plugin process cmd
// with: the transport settings above and the check that the socket is
// served by cmd (or its descendant) as the host's user. Pass them as
// go-plugin's ClientConfig.GRPCDialOptions, with AutoMTLS off. boxctl's host
// uses them; a Go program that starts plugins itself should too (sdktest
// does).
func GRPCDialOptions(cmd *exec.Cmd) []grpc.DialOption {
	return []grpc.DialOption{
		// After go-plugin's own (insecure) credentials, so these win.
		grpc.WithTransportCredentials(peerCredentials{check: pluginPeerCheck(cmd)}),
		grpc.WithInitialWindowSize(transportWindow),
		grpc.WithInitialConnWindowSize(transportWindow),
	}
}

// envClientCert is where go-plugin's AutoMTLS hands the plugin the host's
// certificate; a host that sets it wants TLS.
const envClientCert = "PLUGIN_CLIENT_CERT"

// grpcServer is the gRPC server Serve runs, with the settings that match
// GRPCDialOptions.
func grpcServer(opts []grpc.ServerOption) *grpc.Server {
	opts = append(opts,
		grpc.InitialWindowSize(transportWindow),
		grpc.InitialConnWindowSize(transportWindow),
		grpc.NumStreamWorkers(serverWorkers),
	)
	if os.Getenv(envClientCert) == "" {
		// No TLS asked for: go-plugin set no credentials, these are the
		// only ones.
		opts = append(opts, grpc.Creds(peerCredentials{check: hostPeerCheck()}))
	}
	return grpc.NewServer(opts...)
}
