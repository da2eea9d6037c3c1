package sdktest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/emptypb"
)

// agentPing is the guest agent's readiness call (boxctl.agent.v1, in
// guest/proto/agentv1/agent.proto). Its request is empty; of its response
// AgentReady reads two fields, so that it needs no generated code outside
// sdk: root_mounted (6, bool) and root_error (7, string).
const (
	agentPing       = "/boxctl.agent.v1.Agent/Ping"
	pingRootMounted = 6
	pingRootError   = 7
)

// AgentReady waits until the boxctl guest agent behind socket (a plan's
// AgentSocket) answers Ping with the box root mounted, or ctx ends. It is
// the GuestWaiter WithGuest uses by default, and what the core waits for
// before it calls a box running.
func AgentReady(ctx context.Context, socket string) error {
	conn, err := grpc.NewClient("passthrough:///boxctl-agent",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}))
	if err != nil {
		return err
	}
	defer conn.Close()
	var last error
	for {
		// Short attempts: a connection that went stale while the guest
		// booted is replaced.
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp := &emptypb.Empty{}
		err := conn.Invoke(actx, agentPing, &emptypb.Empty{}, resp, grpc.WaitForReady(true))
		cancel()
		if err == nil {
			mounted, why := parsePing(resp.ProtoReflect().GetUnknown())
			if mounted {
				return nil
			}
			if why != "" {
				return fmt.Errorf("the guest agent cannot mount the box root: %s", why)
			}
			err = errors.New("the box root is not mounted yet")
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("guest agent not ready: %w (last: %v)", ctx.Err(), last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// parsePing reads root_mounted and root_error from a PingResponse.
func parsePing(b []byte) (mounted bool, rootErr string) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return mounted, rootErr
		}
		b = b[n:]
		switch {
		case num == pingRootMounted && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return mounted, rootErr
			}
			mounted, b = v != 0, b[n:]
		case num == pingRootError && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return mounted, rootErr
			}
			rootErr, b = string(v), b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return mounted, rootErr
			}
			b = b[n:]
		}
	}
	return mounted, rootErr
}
