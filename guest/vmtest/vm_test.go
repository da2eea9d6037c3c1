package vmtest

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/guest/tarsafe"
	"github.com/boxctl/boxctl/sdk/guestboot"
)

// TestQEMUArgsCarryTheBootContract: the command line is the guest's console arguments, then
// sdk/guestboot's rendering, and the agent's port has the contract's name.
func TestQEMUArgsCarryTheBootContract(t *testing.T) {
	boot := guestboot.Default()
	boot.Hostname = "h1"
	args := QEMUArgs(Config{Guest: &Guest{Kernel: "k", Initramfs: "i"}, Dir: "/d", Cmdline: "console=ttyS0", Boot: &boot})
	joined := strings.Join(args, " ")
	want := "console=ttyS0 " + strings.Join(boot.Args(), " ")
	if !strings.Contains(joined, "-append "+want+" ") || !strings.Contains(joined, "boxctl.hostname=h1") {
		t.Errorf("QEMU args %q lack the command line %q", joined, want)
	}
	if !strings.Contains(joined, "name="+guestboot.SerialPort) {
		t.Errorf("QEMU args %q lack the agent port %s", joined, guestboot.SerialPort)
	}
	if got := (Config{}).KernelCmdline(); got != strings.Join(guestboot.Default().Args(), " ") {
		t.Errorf("default command line %q", got)
	}
}

// TestVM boots the real guest under QEMU (TCG) twice: once for everything the agent does,
// and once more to see that what was written before a Shutdown persisted on the writable
// disk. It fails (does not skip) when QEMU or the guest build is missing.
func TestVM(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	g, err := BuildGuest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rootDisk, dataDisk := filepath.Join(dir, "root.ext4"), filepath.Join(dir, "data.qcow2")
	if err := MakeRootDisk(ctx, rootDisk); err != nil {
		t.Fatal(err)
	}
	if err := MakeDataDisk(ctx, dataDisk, 256); err != nil {
		t.Fatal(err)
	}
	bootArgs := guestboot.Default()
	bootArgs.Hostname = "testbox"
	cfg := Config{Guest: g, RootDisk: rootDisk, DataDisk: dataDisk, Dir: dir, Cmdline: g.Cmdline, Boot: &bootArgs}

	vm := boot(t, ctx, cfg)
	c := vm.Client

	t.Run("Ping", func(t *testing.T) {
		info, err := c.Ping(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !info.RootMounted || !strings.HasPrefix(info.KernelRelease, "6.") || info.ProtocolVersion != 3 || info.Uptime <= 0 {
			t.Errorf("ping = %+v", info)
		}
	})

	t.Run("ExecUname", func(t *testing.T) {
		r := execIn(t, ctx, c, agentclient.ExecRequest{Argv: []string{"uname", "-a"}}, nil)
		if r.ExitCode != 0 || !strings.HasPrefix(r.stdout, "Linux testbox 6.") || r.PID <= 1 {
			t.Errorf("uname -a: %+v", r)
		}
	})

	t.Run("ExitCodes", func(t *testing.T) {
		for _, tc := range []struct {
			argv []string
			code int
		}{
			{[]string{"sh", "-c", "exit 42"}, 42},
			{[]string{"true"}, 0},
			{[]string{"false"}, 1},
			{[]string{"no-such-program"}, 127},
			{[]string{"/etc/hostname"}, 126},
			{[]string{"sh", "-c", "kill -9 $$"}, 137},
		} {
			r := execIn(t, ctx, c, agentclient.ExecRequest{Argv: tc.argv}, nil)
			if r.ExitCode != tc.code {
				t.Errorf("%v: exit %d, want %d (%+v)", tc.argv, r.ExitCode, tc.code, r)
			}
		}
	})

	t.Run("Stdin", func(t *testing.T) {
		input := strings.Repeat("x", 100000)
		r := execIn(t, ctx, c, agentclient.ExecRequest{Argv: []string{"wc", "-c"}}, strings.NewReader(input))
		if r.ExitCode != 0 || strings.TrimSpace(r.stdout) != "100000" {
			t.Errorf("wc -c: %+v", r)
		}
	})

	t.Run("TTY", func(t *testing.T) {
		req := agentclient.ExecRequest{
			Argv: []string{"sh", "-c", "stty size; tty; echo ready; read x; stty size"},
			TTY:  &agentclient.Size{Rows: 24, Cols: 80},
		}
		stdinR, stdinW := io.Pipe()
		defer stdinW.Close()
		resize := make(chan agentclient.Size, 1)
		var out lockedBuffer
		done := make(chan error, 1)
		var res agentclient.ExitResult
		go func() {
			var err error
			res, err = c.Exec(ctx, req, stdinR, &out, &out, resize, nil)
			done <- err
		}()
		waitFor(t, func() bool { return strings.Contains(out.String(), "ready") }, "the shell")
		resize <- agentclient.Size{Rows: 50, Cols: 132}
		time.Sleep(100 * time.Millisecond) // the resize message goes before the input line
		io.WriteString(stdinW, "\n")
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		got := strings.ReplaceAll(out.String(), "\r\n", "\n")
		if res.ExitCode != 0 || !strings.Contains(got, "24 80\n/dev/pts/") || !strings.Contains(got, "50 132\n") {
			t.Errorf("tty session: %+v, output %q", res, got)
		}
	})

	t.Run("EnvWorkdirUser", func(t *testing.T) {
		r := execIn(t, ctx, c, agentclient.ExecRequest{
			Argv: []string{"sh", "-c", "echo $GREETING; pwd; echo $HOME; id"},
			Env:  []string{"GREETING=hello"}, WorkingDir: "/home/guest", User: "guest",
		}, nil)
		want := "hello\n/home/guest\n/home/guest\nuid=1000(guest) gid=1000(guest) groups=50(staff)"
		if r.ExitCode != 0 || !strings.HasPrefix(r.stdout, want) {
			t.Errorf("got %+v, want stdout starting with %q", r, want)
		}
		r = execIn(t, ctx, c, agentclient.ExecRequest{Argv: []string{"id", "-u"}}, nil)
		if strings.TrimSpace(r.stdout) != "0" {
			t.Errorf("default user: %+v", r)
		}
	})

	t.Run("ConcurrentExecs", func(t *testing.T) {
		var wg sync.WaitGroup
		results := make([]result, 2)
		for i := range results {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				results[i] = execIn(t, ctx, c, agentclient.ExecRequest{Argv: []string{"sh", "-c", fmt.Sprintf("sleep 1; echo %d", i)}}, nil)
			}(i)
		}
		wg.Wait()
		for i, r := range results {
			if r.ExitCode != 0 || r.stdout != fmt.Sprintf("%d\n", i) {
				t.Errorf("exec %d: %+v", i, r)
			}
		}
	})

	t.Run("UploadDownload", func(t *testing.T) {
		content := bytes.Repeat([]byte("boxctl "), 20000)
		var tb bytes.Buffer
		tw := tar.NewWriter(&tb)
		tw.WriteHeader(&tar.Header{Name: "data/", Typeflag: tar.TypeDir, Mode: 0o755})
		tw.WriteHeader(&tar.Header{Name: "data/file.bin", Typeflag: tar.TypeReg, Mode: 0o640, Size: int64(len(content))})
		tw.Write(content)
		tw.WriteHeader(&tar.Header{Name: "data/link", Typeflag: tar.TypeSymlink, Linkname: "file.bin"})
		tw.Close()
		res, err := c.Upload(ctx, "/srv/in", &tb, agentclient.UploadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if res.Entries != 3 || res.Bytes != uint64(len(content)) {
			t.Errorf("upload: %+v", res)
		}
		r := execIn(t, ctx, c, agentclient.ExecRequest{Argv: []string{"sh", "-c", "wc -c < /srv/in/data/link; stat -c %a /srv/in/data/file.bin"}}, nil)
		if r.stdout != fmt.Sprintf("%d\n640\n", len(content)) {
			t.Errorf("uploaded file in the box: %+v", r)
		}

		var out bytes.Buffer
		if err := c.Download(ctx, "/srv/in/data", &out, agentclient.DownloadOptions{IncludeParent: true}); err != nil {
			t.Fatal(err)
		}
		dest := t.TempDir()
		if _, err := tarsafe.Extract(ctx, &out, dest, tarsafe.ExtractOptions{}); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(dest, "data", "link"))
		if err != nil || !bytes.Equal(got, content) {
			t.Errorf("round trip: %d bytes, %v; want %d bytes", len(got), err, len(content))
		}
		if err := c.Download(ctx, "/no/such/path", io.Discard, agentclient.DownloadOptions{}); !agentclient.IsNotFound(err) {
			t.Errorf("missing path: %v", err)
		}
	})

	t.Run("HostileUploadRefused", func(t *testing.T) {
		var tb bytes.Buffer
		tw := tar.NewWriter(&tb)
		tw.WriteHeader(&tar.Header{Name: "esc", Typeflag: tar.TypeSymlink, Linkname: "/etc"})
		tw.WriteHeader(&tar.Header{Name: "esc/owned", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1})
		tw.Write([]byte("x"))
		tw.Close()
		_, err := c.Upload(ctx, "/tmp/hostile", &tb, agentclient.UploadOptions{})
		if !agentclient.IsEscape(err) {
			t.Errorf("upload through a symlink to /etc: %v", err)
		}
		var tb2 bytes.Buffer
		tw = tar.NewWriter(&tb2)
		tw.WriteHeader(&tar.Header{Name: "../../etc/owned", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1})
		tw.Write([]byte("x"))
		tw.Close()
		if _, err := c.Upload(ctx, "/tmp/hostile", &tb2, agentclient.UploadOptions{}); !agentclient.IsEscape(err) {
			t.Errorf("upload of ../ entry: %v", err)
		}
		r := execIn(t, ctx, c, agentclient.ExecRequest{Argv: []string{"ls", "/etc/owned"}}, nil)
		if r.ExitCode == 0 {
			t.Error("a hostile entry landed in /etc")
		}
	})

	t.Run("QuiesceThaw", func(t *testing.T) {
		fr, err := c.Quiesce(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		if fr.Renewed || fr.Lease != 10*time.Second {
			t.Errorf("quiesce = %+v; want a fresh freeze with the default 10s lease", fr)
		}
		if fr, err = c.Quiesce(ctx, 0); err != nil || !fr.Renewed {
			t.Fatalf("second quiesce: %+v, %v; want a renewal", fr, err)
		}
		// A write to the frozen writable disk blocks until Thaw: its timeout (far shorter
		// than the time until Thaw) fires while it waits.
		var res agentclient.ExitResult
		var execErr error
		done := make(chan struct{})
		go func() {
			defer close(done)
			res, execErr = c.Exec(ctx, agentclient.ExecRequest{
				Argv: []string{"sh", "-c", "echo frozen > /root/frozen.txt && sync"}, Timeout: 300 * time.Millisecond,
			}, nil, nil, nil, nil, nil)
		}()
		time.Sleep(3 * time.Second)
		th, thawErr := c.Thaw(ctx)
		<-done
		if thawErr != nil {
			t.Fatal(thawErr)
		}
		if th.LeaseExpired || th.Frozen < 3*time.Second {
			t.Errorf("thaw = %+v; want the freeze of over 3s ended by Thaw", th)
		}
		if th, err := c.Thaw(ctx); err != nil || th.Frozen != 0 {
			t.Fatalf("second thaw: %+v, %v", th, err)
		}
		if execErr != nil || !res.TimedOut {
			t.Errorf("write while frozen: %+v, %v; want it blocked past its timeout", res, execErr)
		}
		r := execIn(t, ctx, c, agentclient.ExecRequest{Argv: []string{"sh", "-c", "echo thawed > /root/thawed.txt && cat /root/thawed.txt"}}, nil)
		if r.ExitCode != 0 || r.stdout != "thawed\n" {
			t.Errorf("write after thaw: %+v", r)
		}
	})

	t.Run("FreezeLeaseExpires", func(t *testing.T) {
		// A host that never thaws (it died): the guest thaws by itself when the lease ends,
		// and the blocked write completes.
		const lease = 1500 * time.Millisecond
		if _, err := c.Quiesce(ctx, lease); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		r := execIn(t, ctx, c, agentclient.ExecRequest{Argv: []string{"sh", "-c", "echo after-lease > /root/lease.txt && sync"}, Timeout: time.Minute}, nil)
		if r.ExitCode != 0 || r.TimedOut {
			t.Fatalf("write during an expiring freeze: %+v", r)
		}
		if took := time.Since(start); took < lease/2 {
			t.Errorf("the write finished %s after Quiesce: it was not blocked by the freeze", took)
		}
		th, err := c.Thaw(ctx)
		if err != nil || !th.LeaseExpired || th.Frozen < lease/2 {
			t.Errorf("thaw after the lease = %+v, %v; want LeaseExpired", th, err)
		}
	})

	t.Run("DiffInsideAFreeze", func(t *testing.T) {
		r := execIn(t, ctx, c, agentclient.ExecRequest{Argv: []string{"sh", "-c",
			"echo committed > /root/new.txt && rmdir /var && rm -rf /home/guest && mkdir /home/guest && touch /home/guest/fresh"}}, nil)
		if r.ExitCode != 0 {
			t.Fatalf("changing the box: %+v", r)
		}
		if _, err := c.Quiesce(ctx, 0); err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		dctx, cancel := context.WithTimeout(ctx, time.Minute)
		_, err := c.Diff(dctx, &buf)
		cancel()
		th, thawErr := c.Thaw(ctx)
		if err != nil {
			t.Fatalf("diff of a frozen box: %v", err)
		}
		if thawErr != nil || th.LeaseExpired {
			t.Fatalf("thaw after diff: %+v, %v", th, thawErr)
		}
		t.Logf("diff: %d bytes, guest frozen %s", buf.Len(), th.Frozen)
		names := map[string]string{}
		tr := tar.NewReader(&buf)
		for {
			hdr, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("diff is not a tar: %v", err)
			}
			body, _ := io.ReadAll(tr)
			names[hdr.Name] = string(body)
		}
		for name, content := range map[string]string{"root/new.txt": "committed\n", ".wh.var": "", "home/guest/.wh..wh..opq": "", "home/guest/fresh": ""} {
			if got, ok := names[name]; !ok || got != content {
				t.Errorf("layer entry %s: %q (present %v); want %q", name, got, ok, content)
			}
		}
		for _, name := range []string{"etc/hostname", "etc/hosts"} {
			if _, ok := names[name]; ok {
				t.Errorf("the layer has the agent's own %s", name)
			}
		}
	})

	t.Run("Stats", func(t *testing.T) {
		st, err := c.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.NumCPUs != 1 || st.MemoryTotalBytes < 100<<20 || st.MemoryAvailableBytes == 0 || st.Processes < 10 || st.Uptime <= 0 {
			t.Errorf("stats = %+v", st)
		}
	})

	t.Run("HostReconnects", func(t *testing.T) {
		if err := vm.RestartMux(); err != nil {
			t.Fatal(err)
		}
		c = vm.Client
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if _, err := c.WaitReady(rctx); err != nil {
			t.Fatalf("after reconnecting: %v", err)
		}
		r := execIn(t, ctx, c, agentclient.ExecRequest{Argv: []string{"echo", "again"}}, nil)
		if r.stdout != "again\n" {
			t.Errorf("exec after reconnect: %+v", r)
		}
	})

	t.Run("ShutdownPersists", func(t *testing.T) {
		r := execIn(t, ctx, c, agentclient.ExecRequest{Argv: []string{"sh", "-c", "echo persisted > /root/persist.txt"}}, nil)
		if r.ExitCode != 0 {
			t.Fatalf("write: %+v", r)
		}
		if err := c.Shutdown(ctx, 0); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if err := vm.Wait(wctx); err != nil {
			t.Fatalf("QEMU did not exit cleanly after Shutdown: %v\n%s", err, vm.QEMUStderr())
		}
		vm.Kill()

		vm2 := boot(t, ctx, cfg)
		r = execIn(t, ctx, vm2.Client, agentclient.ExecRequest{Argv: []string{"cat", "/root/persist.txt", "/root/thawed.txt"}}, nil)
		if r.ExitCode != 0 || r.stdout != "persisted\nthawed\n" {
			t.Errorf("after reboot: %+v", r)
		}
		if err := vm2.Client.Shutdown(ctx, 0); err != nil {
			t.Fatal(err)
		}
		if err := vm2.Wait(wctx); err != nil {
			t.Errorf("second VM did not power off: %v", err)
		}
	})
}

// boot starts a VM and waits for its agent; the VM is killed when the test ends, and its
// console is printed if the test failed.
func boot(t *testing.T, ctx context.Context, cfg Config) *VM {
	t.Helper()
	vm, err := Boot(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		vm.Kill()
		if t.Failed() {
			t.Logf("QEMU stderr:\n%s\nguest console:\n%s", vm.QEMUStderr(), vm.Console())
		}
	})
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	info, err := vm.Client.WaitReady(rctx)
	if err != nil {
		t.Fatalf("guest agent not ready: %v", err)
	}
	t.Logf("guest ready %v after QEMU started (kernel %s, agent %s)", time.Since(vm.Started).Round(time.Millisecond), info.KernelRelease, info.AgentVersion)
	return vm
}

type result struct {
	agentclient.ExitResult
	stdout, stderr string
}

func execIn(t *testing.T, ctx context.Context, c *agentclient.Client, req agentclient.ExecRequest, stdin io.Reader) result {
	t.Helper()
	var out, errb bytes.Buffer
	res, err := c.Exec(ctx, req, stdin, &out, &errb, nil, nil)
	if err != nil {
		t.Fatalf("exec %v: %v", req.Argv, err)
	}
	return result{ExitResult: res, stdout: out.String(), stderr: errb.String()}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
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
