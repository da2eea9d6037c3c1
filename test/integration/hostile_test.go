package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
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

// serveHostileAgent points the box's record at a hostile agent double that
// answers every Download with tarball.
func serveHostileAgent(t *testing.T, e *env, id string, tarball []byte) {
	t.Helper()
	sock := filepath.Join(testbin.ShortTempDir(t), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	agentv1.RegisterAgentServer(srv, &hostileAgentDouble{tar: tarball})
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	editRecord(t, e, id, func(x *model.Box) { x.Run.AgentSocket = sock })
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
			serveHostileAgent(t, e, b.ID, hostileTar(t, entries...))
			parent := t.TempDir()
			dest := filepath.Join(parent, "dest")
			err := e.runtime().CopyOut(context.Background(), "hostile", "/data", dest, core.CopyOptions{})
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

// TestCopyOutNeverPlantsDevicesOrSetIDPrograms is defect 1 of issue 8 at the
// CLI: a guest's device nodes, FIFOs and set-id bits do not reach the host,
// each skipped file is reported, and the copy still succeeds.
func TestCopyOutNeverPlantsDevicesOrSetIDPrograms(t *testing.T) {
	e := newEnv(t, "")
	b := startDetached(t, e, "hostile")
	serveHostileAgent(t, e, b.ID, hostileTar(t,
		&tar.Header{Name: "data/", Typeflag: tar.TypeDir, Mode: 0o2777},
		&tar.Header{Name: "data/sda", Typeflag: tar.TypeBlock, Mode: 0o666, Devmajor: 8},
		&tar.Header{Name: "data/kmem", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 2},
		&tar.Header{Name: "data/fifo", Typeflag: tar.TypeFifo, Mode: 0o666},
		&tar.Header{Name: "data/rootshell", Typeflag: tar.TypeReg, Mode: 0o4755, Size: 4},
		&tar.Header{Name: "data/plain", Typeflag: tar.TypeReg, Mode: 0o644, Size: 4},
	))
	dest := t.TempDir()
	_, errs, code := e.cli("cp", "hostile:/data", dest)
	if code != 0 {
		t.Fatalf("cp: exit %d: %s", code, errs)
	}
	for _, want := range []string{
		"boxctl: cp: skipped data/sda: block device 8:0 (",
		"boxctl: cp: skipped data/kmem: character device 1:2 (",
		"boxctl: cp: skipped data/fifo: FIFO (",
	} {
		if !strings.Contains(errs, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errs)
		}
	}
	if n := strings.Count(errs, "\n"); n != 3 {
		t.Errorf("stderr has %d lines, want one per skipped file:\n%s", n, errs)
	}
	for _, name := range []string{"sda", "kmem", "fifo"} {
		if _, err := os.Lstat(filepath.Join(dest, "data", name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("data/%s exists on the host (%v)", name, err)
		}
	}
	for _, name := range []string{"data", "data/rootshell", "data/plain"} {
		fi, err := os.Lstat(filepath.Join(dest, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 {
			t.Errorf("%s has mode %v: set-id bit kept", name, fi.Mode())
		}
	}
	if os.Geteuid() == 0 {
		// The unsafe flag gives root what the box had.
		unsafe := t.TempDir()
		e.ok("cp", "--unsafe-special-files", "hostile:/data", unsafe)
		if fi, err := os.Lstat(filepath.Join(unsafe, "data", "sda")); err != nil || fi.Mode()&os.ModeDevice == 0 {
			t.Errorf("--unsafe-special-files: data/sda = %v, %v", fi, err)
		}
		if fi, err := os.Lstat(filepath.Join(unsafe, "data", "rootshell")); err != nil || fi.Mode()&os.ModeSetuid == 0 {
			t.Errorf("--unsafe-special-files: data/rootshell = %v, %v", fi, err)
		}
	}
}

func TestCopyRefusesAnEmptyBoxPath(t *testing.T) {
	e := newEnv(t, "")
	startDetached(t, e, "b")
	for _, args := range [][]string{{"cp", "b:", t.TempDir()}, {"cp", t.TempDir(), "b:"}} {
		_, errs, code := e.cli(args...)
		if code != 125 || !strings.Contains(errs, "empty path in the box") || !strings.Contains(errs, "b:/") {
			t.Errorf("%v: exit %d: %s", args, code, errs)
		}
	}
	if _, errs, code := e.cli("cp", "--unsafe-special-files", t.TempDir(), "b:/x"); code != 125 || !strings.Contains(errs, "copies out of a box only") {
		t.Errorf("--unsafe-special-files into a box: exit %d: %s", code, errs)
	}
}
