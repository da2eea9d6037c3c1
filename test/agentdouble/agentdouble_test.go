package agentdouble

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/internal/proc"
)

type fixture struct {
	root, console string
	d             *Agent
	c             *agentclient.Client
	poweredOff    chan struct{}
}

func start(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{root: filepath.Join(dir, "root"), console: filepath.Join(dir, "console.log"), poweredOff: make(chan struct{})}
	d, err := New(Config{Root: f.root, Console: f.console, PowerOff: func() { close(f.poweredOff) }, BoxID: "cold1"})
	if err != nil {
		t.Fatal(err)
	}
	f.d = d
	sock := filepath.Join(dir, "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = d.Serve(l) }()
	t.Cleanup(d.Close)
	f.c, err = agentclient.Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.c.Close() })
	return f
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestPingExecAndFiles(t *testing.T) {
	f := start(t)
	ctx := ctxT(t)
	info, err := f.c.WaitReady(ctx)
	if err != nil || !info.RootMounted || info.AgentVersion != Version {
		t.Fatalf("WaitReady: %+v %v", info, err)
	}
	// A host command, started in the scratch root.
	var out bytes.Buffer
	res, err := f.c.Exec(ctx, agentclient.ExecRequest{Argv: []string{"sh", "-c", "pwd; echo hi > made; exit 3"}}, nil, &out, &out, nil, nil)
	if err != nil || res.ExitCode != 3 || strings.TrimSpace(out.String()) != f.root {
		t.Fatalf("exec: %+v %v %q, want exit 3 in %s", res, err, out.String(), f.root)
	}
	if b, err := os.ReadFile(filepath.Join(f.root, "made")); err != nil || string(b) != "hi\n" {
		t.Fatalf("the command's file: %q %v", b, err)
	}
	out.Reset()
	if _, err := f.c.Exec(ctx, agentclient.ExecRequest{Argv: []string{"cat"}}, strings.NewReader("in"), &out, nil, nil, nil); err != nil || out.String() != "in" {
		t.Fatalf("stdin: %q %v", out.String(), err)
	}
	if _, err := f.c.Exec(ctx, agentclient.ExecRequest{Argv: []string{"true"}, WorkingDir: "/missing"}, nil, nil, nil, nil, nil); err == nil {
		t.Error("a working directory missing from the scratch root was accepted")
	}
	// Files go into the scratch root and come back out.
	var tarball bytes.Buffer
	tw := tar.NewWriter(&tarball)
	_ = tw.WriteHeader(&tar.Header{Name: "a.txt", Mode: 0o644, Size: 5, Typeflag: tar.TypeReg})
	_, _ = tw.Write([]byte("hello"))
	_ = tw.Close()
	if _, err := f.c.Upload(ctx, "/up", &tarball, agentclient.UploadOptions{}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(f.root, "up", "a.txt")); err != nil || string(b) != "hello" {
		t.Fatalf("uploaded file: %q %v", b, err)
	}
	var back bytes.Buffer
	if err := f.c.Download(ctx, "/up/a.txt", &back, agentclient.DownloadOptions{}); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&back)
	if h, err := tr.Next(); err != nil || h.Name != "a.txt" {
		t.Fatalf("downloaded tar: %+v %v", h, err)
	}
	if b, _ := io.ReadAll(tr); string(b) != "hello" {
		t.Fatalf("downloaded content %q", b)
	}
	if err := f.c.Download(ctx, "/nothing", io.Discard, agentclient.DownloadOptions{}); !agentclient.IsNotFound(err) {
		t.Errorf("download of a missing path: %v", err)
	}
	if st, err := f.c.Stats(ctx); err != nil || st.MemoryTotalBytes == 0 {
		t.Errorf("stats: %+v %v", st, err)
	}
}

// Detached output lands in the console log, and a detached command dies with the double
// as it would with the VM.
func TestDetachedCommandsEndWithTheDouble(t *testing.T) {
	f := start(t)
	ctx := ctxT(t)
	if _, err := f.c.Exec(ctx, agentclient.ExecRequest{Argv: []string{"sh", "-c", "echo detached-output"}, Detach: true}, nil, nil, nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	res, err := f.c.Exec(ctx, agentclient.ExecRequest{Argv: []string{"sleep", "1000"}, Detach: true}, nil, nil, nil, nil, nil)
	if err != nil || res.PID <= 0 {
		t.Fatalf("detached sleep: %+v %v", res, err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if b, _ := os.ReadFile(f.console); strings.Contains(string(b), "detached-output") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the detached command's output never reached the console log")
		}
	}
	f.d.Close()
	for deadline := time.Now().Add(30 * time.Second); syscall.Kill(res.PID, 0) == nil && proc.ParentOf(res.PID) == os.Getpid(); time.Sleep(20 * time.Millisecond) {
		if b, _ := os.ReadFile("/proc/" + strconv.Itoa(res.PID) + "/stat"); strings.Contains(string(b), ") Z ") {
			break // killed, waiting to be reaped
		}
		if time.Now().After(deadline) {
			t.Fatalf("detached process %d still runs after Close", res.PID)
		}
	}
}

func TestShutdownPowersOff(t *testing.T) {
	f := start(t)
	ctx := ctxT(t)
	if err := f.c.Shutdown(ctx, 0); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.poweredOff:
	case <-time.After(30 * time.Second):
		t.Fatal("Shutdown answered but PowerOff was never called")
	}
}

// Reidentify is recorded, not applied, and Ping reports the box ID: the boot one, then the
// new one.
func TestReidentifyIsRecorded(t *testing.T) {
	f := start(t)
	ctx := ctxT(t)
	if info, err := f.c.Ping(ctx); err != nil || info.BoxID != "cold1" {
		t.Fatalf("ping: %+v %v; want box cold1", info, err)
	}
	hostname, _ := os.Hostname()
	now := time.Now().Add(time.Hour)
	if err := f.c.Reidentify(ctx, agentclient.Identity{BoxID: "fork1", Hostname: "fork1", Now: now}); err != nil {
		t.Fatal(err)
	}
	ids := f.d.Identities()
	if len(ids) != 1 || ids[0].BoxID != "fork1" || ids[0].Hostname != "fork1" || !ids[0].Now.Equal(now) || len(ids[0].Entropy) == 0 {
		t.Errorf("identities %+v", ids)
	}
	if info, err := f.c.Ping(ctx); err != nil || info.BoxID != "fork1" {
		t.Errorf("ping after: %+v %v; want box fork1", info, err)
	}
	if h, _ := os.Hostname(); h != hostname {
		t.Errorf("the double changed the host's name to %q", h)
	}
	if err := f.c.Reidentify(ctx, agentclient.Identity{BoxID: "Fork1", Hostname: "x"}); err == nil {
		t.Error("a bad box ID was accepted")
	}
}
