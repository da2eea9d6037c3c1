package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"

	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/guest/proto/agentv1"
	"github.com/boxctl/boxctl/guest/tarsafe"
	"github.com/boxctl/boxctl/test/testbin"
)

// hostileAgentDouble is a TEST DOUBLE of the guest agent: a compromised
// guest that answers Download with a tar whose entries try to escape the
// host's destination. A real guest agent never produces such a tar, so the
// host side's defence cannot be exercised with one.
type hostileAgentDouble struct {
	agentv1.UnimplementedAgentServer
	tar []byte
}

func (h *hostileAgentDouble) Download(_ *agentv1.DownloadRequest, st grpc.ServerStreamingServer[agentv1.DownloadResponse]) error {
	return st.Send(&agentv1.DownloadResponse{Data: h.tar})
}

func hostileTar(t *testing.T, entries ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range entries {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			_, _ = tw.Write(bytes.Repeat([]byte("x"), int(h.Size)))
		}
	}
	_ = tw.Close()
	return buf.Bytes()
}

func TestCopyOutOfAHostileGuestNeverWritesOutsideTheDestination(t *testing.T) {
	e := newEnv(t, "")
	b := startDetached(t, e, "hostile")
	cases := map[string][]*tar.Header{
		"dot-dot name":                  {{Name: "../escaped", Typeflag: tar.TypeReg, Mode: 0o644, Size: 4}},
		"absolute name through dot-dot": {{Name: "/../../escaped", Typeflag: tar.TypeReg, Mode: 0o644, Size: 4}},
		"symlink then write through it": {
			{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "..", Mode: 0o777},
			{Name: "link/escaped", Typeflag: tar.TypeReg, Mode: 0o644, Size: 4},
		},
		"hardlink to a host file": {{Name: "hl", Typeflag: tar.TypeLink, Linkname: "../../../../etc/passwd"}},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			sock := filepath.Join(testbin.ShortTempDir(t), "agent.sock")
			ln, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			srv := grpc.NewServer()
			agentv1.RegisterAgentServer(srv, &hostileAgentDouble{tar: hostileTar(t, entries...)})
			go func() { _ = srv.Serve(ln) }()
			defer srv.Stop()
			editRecord(t, e, b.ID, func(x *model.Box) { x.Run.AgentSocket = sock })

			parent := t.TempDir()
			dest := filepath.Join(parent, "dest")
			err = e.runtime().CopyOut(context.Background(), "hostile", "/data", dest, core.CopyOptions{})
			if !errors.Is(err, tarsafe.ErrEscape) {
				t.Fatalf("copy out of a hostile tar: %v, want a refusal (ErrEscape)", err)
			}
			entries, _ := os.ReadDir(parent)
			for _, de := range entries {
				if de.Name() != "dest" {
					t.Fatalf("something was written outside the destination: %s", de.Name())
				}
			}
		})
	}
}
