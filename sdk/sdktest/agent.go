package sdktest

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
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

// The agent calls AgentWriteFile makes (same file): Upload, whose request
// is a oneof of header (1: UploadHeader, whose dest_dir is 1 and overwrite
// 2) and data (2: tar bytes); Quiesce and Thaw, whose messages are empty.
const (
	agentUpload        = "/boxctl.agent.v1.Agent/Upload"
	agentQuiesce       = "/boxctl.agent.v1.Agent/Quiesce"
	agentThaw          = "/boxctl.agent.v1.Agent/Thaw"
	uploadHeader       = 1
	uploadData         = 2
	uploadDestDir      = 1
	uploadOverwrite    = 2
	uploadChunk        = 1 << 20
	agentWriteFileMode = 0o644
)

func dialAgent(socket string) (*grpc.ClientConn, error) {
	return grpc.NewClient("passthrough:///boxctl-agent",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}))
}

// message is a protobuf message of the agent's protocol as its encoded
// fields: an Empty whose unknown fields are the message.
func message(fields []byte) *emptypb.Empty {
	m := &emptypb.Empty{}
	m.ProtoReflect().SetUnknown(fields)
	return m
}

// AgentWriteFile writes data as a new file at path (absolute, inside the
// box root) through the boxctl guest agent behind socket, and makes it
// durable: the agent's Quiesce syncs the box's writable filesystem (and
// Thaw undoes the freeze at once), so when it returns the file is on the
// VM's writable disk. It is the GuestWriter WithGuestWrites uses by
// default.
func AgentWriteFile(ctx context.Context, socket, path string, data []byte) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("AgentWriteFile %q: want an absolute path inside the box root", path)
	}
	var archive bytes.Buffer
	tw := tar.NewWriter(&archive)
	if err := tw.WriteHeader(&tar.Header{Name: filepath.Base(path), Mode: agentWriteFileMode, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	if _, err := tw.Write(data); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	conn, err := dialAgent(socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true}, agentUpload)
	if err != nil {
		return fmt.Errorf("upload %s: %w", path, err)
	}
	var header []byte
	header = protowire.AppendTag(header, uploadDestDir, protowire.BytesType)
	header = protowire.AppendString(header, filepath.Dir(path))
	header = protowire.AppendTag(header, uploadOverwrite, protowire.VarintType)
	header = protowire.AppendVarint(header, 1)
	var first []byte
	first = protowire.AppendTag(first, uploadHeader, protowire.BytesType)
	first = protowire.AppendBytes(first, header)
	msgs := []*emptypb.Empty{message(first)}
	for b := archive.Bytes(); len(b) > 0; {
		n := min(len(b), uploadChunk)
		var m []byte
		m = protowire.AppendTag(m, uploadData, protowire.BytesType)
		m = protowire.AppendBytes(m, b[:n])
		msgs, b = append(msgs, message(m)), b[n:]
	}
	for _, m := range msgs {
		if err := st.SendMsg(m); err != nil {
			break // the status comes with RecvMsg
		}
	}
	if err := st.CloseSend(); err != nil {
		return fmt.Errorf("upload %s: %w", path, err)
	}
	if err := st.RecvMsg(&emptypb.Empty{}); err != nil {
		return fmt.Errorf("upload %s: %w", path, err)
	}
	// Quiesce syncs the filesystem before it freezes it; Thaw, always.
	qerr := conn.Invoke(ctx, agentQuiesce, &emptypb.Empty{}, &emptypb.Empty{})
	tctx, tcancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer tcancel()
	terr := conn.Invoke(tctx, agentThaw, &emptypb.Empty{}, &emptypb.Empty{})
	if err := errors.Join(qerr, terr); err != nil {
		return fmt.Errorf("sync %s (the agent's Quiesce and Thaw): %w", path, err)
	}
	return nil
}

// AgentReady waits until the boxctl guest agent behind socket (a plan's
// AgentSocket) answers Ping with the box root mounted, or ctx ends. It is
// the GuestWaiter WithGuest uses by default, and what the core waits for
// before it calls a box running.
func AgentReady(ctx context.Context, socket string) error {
	conn, err := dialAgent(socket)
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
