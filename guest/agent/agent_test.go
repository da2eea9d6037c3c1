package agent_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/boxctl/boxctl/guest/agent"
	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/guest/proto/agentv1"
	"github.com/boxctl/boxctl/test/images/busybox"
)

// fixture is an Agent serving a busybox root directory over a unix socket, with a client.
// Commands really run, chrooted into the directory, as the users of its /etc/passwd: the
// tests need root (as the agent has in the guest).
type fixture struct {
	root   string
	client *agentclient.Client
	agent  *agent.Agent
}

func newFixture(t *testing.T, mutate func(*agent.Config)) *fixture {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the agent runs commands chrooted and as other users: these tests need root")
	}
	root := filepath.Join(t.TempDir(), "root")
	if err := busybox.WriteRootfs(root, busybox.Options{}); err != nil {
		t.Fatalf("busybox rootfs (install busybox-static): %v", err)
	}
	cfg := agent.Config{Root: root, Version: "test", OutputDrain: 100 * time.Millisecond}
	if mutate != nil {
		mutate(&cfg)
	}
	a := agent.New(cfg)
	srv := grpc.NewServer()
	a.Register(srv)
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	c, err := agentclient.Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &fixture{root: root, client: c, agent: a}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type result struct {
	agentclient.ExitResult
	stdout, stderr string
	err            error
}

func (f *fixture) run(t *testing.T, req agentclient.ExecRequest, stdin io.Reader) result {
	t.Helper()
	var out, errb bytes.Buffer
	res, err := f.client.Exec(ctxT(t), req, stdin, &out, &errb, nil, nil)
	return result{ExitResult: res, stdout: out.String(), stderr: errb.String(), err: err}
}

func sh(script string) agentclient.ExecRequest {
	return agentclient.ExecRequest{Argv: []string{"sh", "-c", script}}
}

func TestPing(t *testing.T) {
	f := newFixture(t, nil)
	info, err := f.client.Ping(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if info.AgentVersion != "test" || info.ProtocolVersion != agent.ProtocolVersion || info.KernelRelease == "" ||
		!info.RootMounted || info.Uptime <= 0 || info.BootTime.IsZero() {
		t.Errorf("ping = %+v", info)
	}
	if _, err := f.client.WaitReady(ctxT(t)); err != nil {
		t.Errorf("WaitReady: %v", err)
	}
}

func TestExecOutputAndExitCodes(t *testing.T) {
	f := newFixture(t, nil)
	r := f.run(t, sh("echo out; echo err >&2; exit 3"), nil)
	if r.err != nil || r.ExitCode != 3 || r.stdout != "out\n" || r.stderr != "err\n" || r.PID == 0 {
		t.Errorf("got %+v", r)
	}
	r = f.run(t, agentclient.ExecRequest{Argv: []string{"uname", "-s"}}, nil)
	if r.err != nil || r.ExitCode != 0 || r.stdout != "Linux\n" {
		t.Errorf("uname: %+v", r)
	}
	r = f.run(t, sh("kill -KILL $$"), nil)
	if r.err != nil || r.ExitCode != 137 || r.Signal != 9 {
		t.Errorf("killed: %+v", r)
	}
}

func TestExecNotFoundAndNotExecutable(t *testing.T) {
	f := newFixture(t, nil)
	for _, tc := range []struct {
		argv0 string
		code  int
		msg   string
	}{
		{"no-such-command", 127, "no-such-command: command not found"},
		{"/bin/no-such-file", 127, "/bin/no-such-file: no such file or directory"},
		{"/etc/passwd", 126, "/etc/passwd: permission denied"},
		{"/etc", 126, "/etc: permission denied"},
	} {
		r := f.run(t, agentclient.ExecRequest{Argv: []string{tc.argv0}}, nil)
		if r.err != nil || r.ExitCode != tc.code || !strings.Contains(r.stderr, tc.msg) || r.PID != 0 {
			t.Errorf("%s: got %+v, want exit %d and %q on stderr", tc.argv0, r, tc.code, tc.msg)
		}
	}
}

func TestExecStdin(t *testing.T) {
	f := newFixture(t, nil)
	input := strings.Repeat("line of input\n", 10000)
	r := f.run(t, agentclient.ExecRequest{Argv: []string{"wc", "-l"}}, strings.NewReader(input))
	if r.err != nil || r.ExitCode != 0 || strings.TrimSpace(r.stdout) != "10000" {
		t.Errorf("wc -l: %+v", r)
	}
	// Without stdin the process reads /dev/null.
	r = f.run(t, agentclient.ExecRequest{Argv: []string{"cat"}}, nil)
	if r.err != nil || r.ExitCode != 0 || r.stdout != "" {
		t.Errorf("cat without stdin: %+v", r)
	}
}

func TestExecTTYAndResize(t *testing.T) {
	f := newFixture(t, nil)
	req := sh("stty size; test -t 0 && echo is-a-tty; echo to-stderr >&2; read line; stty size; echo got:$line")
	req.TTY = &agentclient.Size{Rows: 24, Cols: 80}
	stdinR, stdinW := io.Pipe()
	resize := make(chan agentclient.Size, 1)
	var out lockedBuffer
	done := make(chan result, 1)
	go func() {
		res, err := f.client.Exec(ctxT(t), req, stdinR, &out, &out, resize, nil)
		done <- result{ExitResult: res, err: err}
	}()
	waitFor(t, func() bool { return strings.Contains(out.String(), "to-stderr") }, "first output")
	resize <- agentclient.Size{Rows: 40, Cols: 132}
	// The resize is applied before later input: messages are handled in order.
	time.Sleep(50 * time.Millisecond)
	io.WriteString(stdinW, "hello\n")
	r := <-done
	stdinW.Close()
	got := strings.ReplaceAll(out.String(), "\r\n", "\n")
	if r.err != nil || r.ExitCode != 0 {
		t.Fatalf("tty exec: %+v, output %q", r, got)
	}
	for _, want := range []string{"24 80\n", "is-a-tty\n", "to-stderr\n", "40 132\n", "got:hello\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("output %q lacks %q", got, want)
		}
	}
}

func TestExecTTYStdinEOF(t *testing.T) {
	f := newFixture(t, nil)
	req := agentclient.ExecRequest{Argv: []string{"cat"}, TTY: &agentclient.Size{Rows: 10, Cols: 40}}
	r := f.run(t, req, strings.NewReader("abc\n"))
	if r.err != nil || r.ExitCode != 0 || !strings.Contains(r.stdout, "abc") {
		t.Errorf("cat on a tty with stdin EOF: %+v", r)
	}
}

func TestExecEnvWorkdirUser(t *testing.T) {
	f := newFixture(t, nil)
	r := f.run(t, agentclient.ExecRequest{
		Argv: []string{"sh", "-c", "echo $FOO; echo $HOME; echo $PATH; pwd; id"},
		Env:  []string{"FOO=bar"}, WorkingDir: "/home/guest", User: "guest",
	}, nil)
	want := fmt.Sprintf("bar\n/home/guest\n%s\n/home/guest\nuid=1000(guest) gid=1000(guest) groups=50(staff)", agent.DefaultPath)
	if r.err != nil || r.ExitCode != 0 || !strings.HasPrefix(r.stdout, want) {
		t.Errorf("got %+v\nwant stdout starting with %q", r, want)
	}
	r = f.run(t, agentclient.ExecRequest{Argv: []string{"id", "-u"}, User: "1000:50"}, nil)
	if r.err != nil || strings.TrimSpace(r.stdout) != "1000" {
		t.Errorf("1000:50: %+v", r)
	}
	r = f.run(t, agentclient.ExecRequest{Argv: []string{"id", "-g"}, User: "guest:staff"}, nil)
	if r.err != nil || strings.TrimSpace(r.stdout) != "50" {
		t.Errorf("guest:staff: %+v", r)
	}
	r = f.run(t, agentclient.ExecRequest{Argv: []string{"sh", "-c", "touch /root/x"}, User: "guest"}, nil)
	if r.err != nil || r.ExitCode == 0 {
		t.Errorf("guest could write to /root: %+v", r)
	}
	r = f.run(t, agentclient.ExecRequest{Argv: []string{"pwd"}}, nil)
	if r.err != nil || r.stdout != "/\n" {
		t.Errorf("default workdir: %+v", r)
	}

	r = f.run(t, agentclient.ExecRequest{Argv: []string{"id"}, User: "nobody-here"}, nil)
	if status.Code(r.err) != codes.NotFound {
		t.Errorf("unknown user: err = %v", r.err)
	}
	r = f.run(t, agentclient.ExecRequest{Argv: []string{"pwd"}, WorkingDir: "/nonexistent"}, nil)
	if r.err == nil || !strings.Contains(r.err.Error(), "working directory /nonexistent does not exist") {
		t.Errorf("missing workdir: err = %v", r.err)
	}
	r = f.run(t, agentclient.ExecRequest{Argv: []string{"env"}, Env: []string{"NOEQUALS"}}, nil)
	if status.Code(r.err) != codes.InvalidArgument {
		t.Errorf("bad env: err = %v", r.err)
	}
}

func TestExecSignal(t *testing.T) {
	f := newFixture(t, nil)
	signals := make(chan int, 1)
	var out lockedBuffer
	done := make(chan result, 1)
	go func() {
		res, err := f.client.Exec(ctxT(t), sh("echo ready; sleep 100"), nil, &out, nil, nil, signals)
		done <- result{ExitResult: res, err: err}
	}()
	waitFor(t, func() bool { return strings.Contains(out.String(), "ready") }, "ready")
	signals <- int(syscall.SIGTERM)
	r := <-done
	if r.err != nil || r.ExitCode != 143 || r.Signal != 15 || r.TimedOut {
		t.Errorf("got %+v", r)
	}
}

func TestExecTimeout(t *testing.T) {
	f := newFixture(t, nil)
	req := sh("sleep 100")
	req.Timeout = 300 * time.Millisecond
	r := f.run(t, req, nil)
	if r.err != nil || !r.TimedOut || r.Signal != 15 {
		t.Errorf("sleep with timeout: %+v", r)
	}
	// A process that ignores SIGTERM gets SIGKILL after the grace period.
	req = sh(`trap "" TERM; while :; do :; done`)
	req.Timeout = 200 * time.Millisecond
	req.KillGrace = 200 * time.Millisecond
	r = f.run(t, req, nil)
	if r.err != nil || !r.TimedOut || r.Signal != 9 || r.ExitCode != 137 {
		t.Errorf("TERM-ignoring process: %+v", r)
	}
}

func TestExecCancelKillsProcess(t *testing.T) {
	f := newFixture(t, nil)
	ctx, cancel := context.WithCancel(ctxT(t))
	var out lockedBuffer
	done := make(chan error, 1)
	go func() {
		_, err := f.client.Exec(ctx, sh("echo $$; exec sleep 100"), nil, &out, nil, nil, nil)
		done <- err
	}()
	waitFor(t, func() bool { return strings.HasSuffix(out.String(), "\n") }, "pid")
	pid, err := strconv.Atoi(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err == nil {
		t.Error("cancelled exec returned no error")
	}
	waitFor(t, func() bool { return syscall.Kill(pid, 0) != nil }, "process killed and reaped")
}

func TestExecConcurrent(t *testing.T) {
	f := newFixture(t, nil)
	var wg sync.WaitGroup
	results := make([]result, 6)
	for i := range results {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			results[i] = f.run(t, sh(fmt.Sprintf("sleep 0.2; echo %d; exit %d", i, i)), nil)
		}(i)
	}
	wg.Wait()
	for i, r := range results {
		if r.err != nil || r.ExitCode != i || r.stdout != fmt.Sprintf("%d\n", i) {
			t.Errorf("exec %d: %+v", i, r)
		}
	}
}

func TestExecBackgroundChildKeepsOutputOpen(t *testing.T) {
	f := newFixture(t, nil)
	// The shell exits at once; the background sleep holds stdout. Exec must still return.
	r := f.run(t, sh("sleep 30 & echo done"), nil)
	if r.err != nil || r.ExitCode != 0 || r.stdout != "done\n" {
		t.Errorf("got %+v", r)
	}
}

func TestExecBadRequests(t *testing.T) {
	f := newFixture(t, nil)
	if _, err := f.client.Exec(ctxT(t), agentclient.ExecRequest{}, nil, nil, nil, nil, nil); err == nil {
		t.Error("empty argv accepted by the client")
	}
	st, err := f.client.API().Exec(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Stdin{Stdin: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("stdin before start: %v", err)
	}
}

// mkTar builds a tar from name, body pairs in order; a body "->target" makes a symlink.
func mkTar(t *testing.T, pairs ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := 0; i+1 < len(pairs); i += 2 {
		name, body := pairs[i], pairs[i+1]
		hdr := &tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}
		if target, ok := strings.CutPrefix(body, "->"); ok {
			hdr = &tar.Header{Name: name, Mode: 0o777, Typeflag: tar.TypeSymlink, Linkname: target}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := io.WriteString(tw, body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestUploadDownload(t *testing.T) {
	f := newFixture(t, nil)
	ctx := ctxT(t)
	big := strings.Repeat("0123456789", 50000)
	res, err := f.client.Upload(ctx, "/home/guest/in", bytes.NewReader(mkTar(t,
		"a.txt", "A", "sub/big", big, "link", "->sub/big",
	)), agentclient.UploadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Entries != 3 || res.Bytes != uint64(1+len(big)) {
		t.Errorf("upload result %+v", res)
	}
	r := f.run(t, sh("cat /home/guest/in/a.txt; echo; wc -c < /home/guest/in/link"), nil)
	if r.stdout != fmt.Sprintf("A\n%d\n", len(big)) {
		t.Errorf("uploaded files in the box: %+v", r)
	}

	var tarball bytes.Buffer
	if err := f.client.Download(ctx, "/home/guest/in", &tarball, agentclient.DownloadOptions{IncludeParent: true}); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	tr := tar.NewReader(&tarball)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		got[hdr.Name] = string(b)
		if hdr.Typeflag == tar.TypeSymlink {
			got[hdr.Name] = "->" + hdr.Linkname
		}
	}
	if got["in/a.txt"] != "A" || got["in/sub/big"] != big || got["in/link"] != "->sub/big" {
		t.Errorf("download entries: %v", keys(got))
	}

	// Without overwrite an existing file is refused; with it, replaced.
	_, err = f.client.Upload(ctx, "/home/guest/in", bytes.NewReader(mkTar(t, "a.txt", "B")), agentclient.UploadOptions{})
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("upload over existing file: %v", err)
	}
	if _, err := f.client.Upload(ctx, "/home/guest/in", bytes.NewReader(mkTar(t, "a.txt", "B")), agentclient.UploadOptions{Overwrite: true}); err != nil {
		t.Errorf("overwrite: %v", err)
	}

	err = f.client.Download(ctx, "/nope", io.Discard, agentclient.DownloadOptions{})
	if !agentclient.IsNotFound(err) {
		t.Errorf("download of a missing path: %v", err)
	}
}

func TestUploadRefusesEscapes(t *testing.T) {
	f := newFixture(t, nil)
	ctx := ctxT(t)
	outside := t.TempDir() // a host directory: must stay untouched
	rel := "../../../../../../../../../../" + strings.TrimPrefix(outside, "/")
	for name, tarball := range map[string][]byte{
		"dotdot":           mkTar(t, rel+"/evil", "x"),
		"symlink absolute": mkTar(t, "l", "->"+outside, "l/evil", "x"),
		"symlink relative": mkTar(t, "l", "->"+rel, "l/evil", "x"),
	} {
		_, err := f.client.Upload(ctx, "/tmp/up-"+strings.ReplaceAll(name, " ", "-"), bytes.NewReader(tarball), agentclient.UploadOptions{})
		if !agentclient.IsEscape(err) {
			t.Errorf("%s: err = %v, want InvalidArgument", name, err)
		}
	}
	// The box's own absolute symlinks resolve inside the box: /tmp/evil-link -> / means the
	// box root, not the host's.
	if err := os.Symlink("/", filepath.Join(f.root, "tmp/rootlink")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.Upload(ctx, "/tmp/rootlink/etc", bytes.NewReader(mkTar(t, "marker", "m")), agentclient.UploadOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(f.root, "etc/marker")); err != nil {
		t.Errorf("upload through an in-box symlink did not land in the box: %v", err)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Errorf("host directory changed: %v", entries)
	}
}

func TestStats(t *testing.T) {
	f := newFixture(t, nil)
	st, err := f.client.Stats(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.NumCPUs < 1 || st.MemoryTotalBytes == 0 || st.MemoryAvailableBytes == 0 || st.Processes < 1 ||
		st.CPU.User+st.CPU.System+st.CPU.Idle == 0 || st.Uptime <= 0 {
		t.Errorf("stats = %+v", st)
	}
}

func TestQuiesceShutdownNotConfigured(t *testing.T) {
	f := newFixture(t, nil)
	if _, err := f.client.Quiesce(ctxT(t), 0); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("quiesce without a writable mount: %v", err)
	}
	if err := f.client.Shutdown(ctxT(t), 0); status.Code(err) != codes.Unimplemented {
		t.Errorf("shutdown without a handler: %v", err)
	}
}

// TestShutdownContract uses a stand-in for the power-off (which only exists in the VM; the
// real one is exercised by guest/vmtest): the work runs before the reply, the power-off
// after it, once.
func TestShutdownContract(t *testing.T) {
	var mu sync.Mutex
	var calls []string
	poweredOff := make(chan struct{})
	f := newFixture(t, func(c *agent.Config) {
		c.Shutdown = func(ctx context.Context, grace time.Duration) (func(), error) {
			mu.Lock()
			calls = append(calls, "work "+grace.String())
			mu.Unlock()
			return func() {
				mu.Lock()
				calls = append(calls, "poweroff")
				mu.Unlock()
				close(poweredOff)
			}, nil
		}
	})
	if err := f.client.Shutdown(ctxT(t), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := f.client.Shutdown(ctxT(t), 0); err != nil {
		t.Fatalf("second shutdown: %v", err)
	}
	<-poweredOff
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(calls, ",") != "work 5s,poweroff" {
		t.Errorf("calls = %v", calls)
	}
}

func TestRootNotMounted(t *testing.T) {
	f := newFixture(t, func(c *agent.Config) {
		c.RootState = func() agent.RootState {
			return agent.RootState{Err: errors.New("mount overlay: no such device")}
		}
	})
	info, err := f.client.Ping(ctxT(t))
	if err != nil || info.RootMounted || info.RootError == "" {
		t.Errorf("ping: %+v, %v", info, err)
	}
	if _, err := f.client.WaitReady(ctxT(t)); !errors.Is(err, agentclient.ErrRootNotMounted) {
		t.Errorf("WaitReady: %v", err)
	}
	r := f.run(t, sh("true"), nil)
	if r.err == nil || !strings.Contains(r.err.Error(), "no such device") {
		t.Errorf("exec without root: %v", r.err)
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
