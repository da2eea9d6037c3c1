package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/test/testbin"
)

func TestRunCommandOutputExitCodeAndStdin(t *testing.T) {
	e := newEnv(t)
	out, errs, code := e.run(nil, "run", "--rm", e.image, "--", "sh", "-c", "uname -a; echo to-stderr >&2; exit 3")
	if code != 3 || !strings.Contains(out, "Linux") || !strings.Contains(errs, "to-stderr") {
		t.Fatalf("run: exit %d\nstdout %q\nstderr %q%s", code, out, errs, e.consoleTail())
	}
	if names := strings.TrimSpace(e.ok("ls", "-a", "-q")); names != "" {
		t.Fatalf("run --rm left boxes behind: %q", names)
	}
	// stdin piped through run -i, and the image's default command.
	out, errs, code = e.run([]byte("hello from stdin\n"), "run", "-i", "--rm", e.image, "--", "cat")
	if code != 0 || out != "hello from stdin\n" {
		t.Fatalf("run -i: exit %d out %q err %q", code, out, errs)
	}
}

// TestBox shares one booted box across the checks that allow it, then
// takes it through stop/start, a killed QEMU and an unresponsive guest.
func TestBox(t *testing.T) {
	e := newEnv(t)
	id := strings.TrimSpace(e.ok("run", "-d", "--name", "svc", e.image))
	if len(id) != 32 {
		t.Fatalf("run -d printed %q", id)
	}

	t.Run("exit codes and streams", func(t *testing.T) {
		out, errs, code := e.run(nil, "exec", "svc", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
		if code != 7 || out != "out\n" || errs != "err\n" {
			t.Fatalf("exit %d out %q err %q", code, out, errs)
		}
		if _, _, code := e.run(nil, "exec", "svc", "--", "sh", "-c", "kill -9 $$"); code != 137 {
			t.Fatalf("killed by SIGKILL: exit %d, want 137", code)
		}
		if _, errs, code := e.run(nil, "exec", "svc", "--", "/no/such/program"); code != 127 || !strings.Contains(errs, "/no/such/program") {
			t.Fatalf("missing program: exit %d err %q", code, errs)
		}
	})

	t.Run("stdin piping", func(t *testing.T) {
		data := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
		out, errs, code := e.run(data, "exec", "-i", "svc", "--", "sh", "-c", "cat | md5sum")
		if code != 0 || !strings.HasPrefix(out, md5hex(data)) {
			t.Fatalf("exit %d out %q err %q", code, out, errs)
		}
	})

	t.Run("env workdir user", func(t *testing.T) {
		out := e.ok("exec", "-e", "GREETING=hi there", "-w", "/tmp", "-u", "guest", "svc", "--", "sh", "-c", `echo "$GREETING"; pwd; id -un; echo $HOME`)
		if out != "hi there\n/tmp\nguest\n/home/guest\n" {
			t.Fatalf("got %q", out)
		}
		if out := e.ok("exec", "-u", "1000:50", "svc", "--", "id"); !strings.Contains(out, "uid=1000") || !strings.Contains(out, "gid=50") {
			t.Fatalf("uid:gid: %q", out)
		}
	})

	t.Run("tty session", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := e.command(ctx, "exec", "-it", "svc", "--", "sh")
		f, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 24, Cols: 80})
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		term := newTermReader(f)
		send := func(s string) {
			if _, err := f.Write([]byte(s)); err != nil {
				t.Fatal(err)
			}
		}
		send("stty size\r")
		term.expect(t, "24 80")
		if err := pty.Setsize(f, &pty.Winsize{Rows: 40, Cols: 100}); err != nil {
			t.Fatal(err)
		}
		// The resize reaches the guest asynchronously; ask until it shows.
		deadline := time.Now().Add(10 * time.Second)
		for !term.seen("40 100") {
			if time.Now().After(deadline) {
				t.Fatalf("resize never reached the guest; output:\n%s", term.text())
			}
			send("stty size\r")
			time.Sleep(300 * time.Millisecond)
		}
		// Ctrl-C reaches the guest's foreground process through the tty.
		send("sleep 30; echo sl\"\"ept-through\r")
		time.Sleep(500 * time.Millisecond)
		send("\x03")
		send("echo after-interrupt $?\r")
		term.expect(t, "after-interrupt 130")
		send("exit 5\r")
		err = cmd.Wait()
		if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 5 {
			t.Fatalf("tty session exit: %v (%v)", cmd.ProcessState, err)
		}
		if term.seen("slept-through") {
			t.Fatal("Ctrl-C did not interrupt the command")
		}
	})

	t.Run("detached exec keeps running and logs to the console", func(t *testing.T) {
		out := e.ok("exec", "-d", "svc", "--", "sh", "-c", "sleep 1; echo detached-marker; echo done > /tmp/detached")
		if pid, err := strconv.Atoi(strings.TrimSpace(out)); err != nil || pid <= 1 {
			t.Fatalf("exec -d printed %q", out)
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			if _, _, code := e.run(nil, "exec", "svc", "--", "test", "-f", "/tmp/detached"); code == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the detached command never finished")
			}
			time.Sleep(200 * time.Millisecond)
		}
		if logs := e.ok("logs", "svc"); !strings.Contains(logs, "detached-marker") {
			t.Fatalf("detached output not in the console log:\n%s", logs)
		}
		if _, errs, code := e.run(nil, "exec", "-d", "-i", "svc", "--", "true"); code != 125 || !strings.Contains(errs, "cannot be combined") {
			t.Fatalf("exec -d -i: %d %s", code, errs)
		}
	})

	t.Run("two concurrent execs", func(t *testing.T) {
		// A waits for a file only B creates: both finish only if they run
		// at the same time.
		var wg sync.WaitGroup
		var outA, outB string
		var codeA, codeB int
		wg.Add(2)
		go func() {
			defer wg.Done()
			outA, _, codeA = e.run(nil, "exec", "--timeout", "60s", "svc", "--", "sh", "-c", "while [ ! -f /tmp/b-was-here ]; do sleep 0.1; done; echo A")
		}()
		go func() {
			defer wg.Done()
			time.Sleep(300 * time.Millisecond)
			outB, _, codeB = e.run(nil, "exec", "svc", "--", "sh", "-c", "touch /tmp/b-was-here; echo B")
		}()
		wg.Wait()
		if codeA != 0 || codeB != 0 || outA != "A\n" || outB != "B\n" {
			t.Fatalf("A: %d %q, B: %d %q", codeA, outA, codeB, outB)
		}
	})

	t.Run("copy both ways", func(t *testing.T) {
		src := t.TempDir()
		tree := filepath.Join(src, "site")
		if err := os.MkdirAll(filepath.Join(tree, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		files := map[string]string{"index.html": "<h1>hi</h1>\n", "sub/data.txt": strings.Repeat("x", 100000)}
		for name, body := range files {
			if err := os.WriteFile(filepath.Join(tree, name), []byte(body), 0o640); err != nil {
				t.Fatal(err)
			}
		}
		e.ok("cp", tree, "svc:/srv")
		if out := e.ok("exec", "svc", "--", "cat", "/srv/site/index.html"); out != files["index.html"] {
			t.Fatalf("copied in: %q", out)
		}
		if out := e.ok("exec", "svc", "--", "stat", "-c", "%a", "/srv/site/sub/data.txt"); strings.TrimSpace(out) != "640" {
			t.Fatalf("mode not kept: %s", out)
		}
		dest := t.TempDir()
		e.ok("cp", "svc:/srv/site", dest)
		for name, body := range files {
			got, err := os.ReadFile(filepath.Join(dest, "site", name))
			if err != nil || string(got) != body {
				t.Fatalf("copied out %s: %v", name, err)
			}
		}
		// --no-overwrite refuses to replace.
		if _, errs, code := e.run(nil, "cp", "--no-overwrite", "svc:/srv/site", dest); code == 0 || !strings.Contains(errs, "exists") {
			t.Fatalf("--no-overwrite: exit %d %s", code, errs)
		}
		// A symlink in the box pointing at / must not lead the host
		// extraction outside the destination.
		e.ok("exec", "svc", "--", "sh", "-c", "mkdir -p /tmp/out && ln -sf / /tmp/out/escape && echo ok > /tmp/out/f")
		dest2 := t.TempDir()
		e.ok("cp", "svc:/tmp/out", dest2)
		if fi, err := os.Lstat(filepath.Join(dest2, "out", "escape")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Fatalf("symlink not copied as a symlink: %v", err)
		}
	})

	t.Run("copy out never plants devices or set-id programs on the host", func(t *testing.T) {
		// As root in the guest: what a hostile box would leave for someone to copy out.
		e.ok("exec", "svc", "--", "sh", "-ec", `
			mkdir -p /tmp/hostile /tmp/sparse && cd /tmp/hostile
			mknod blk b 8 0 && mknod chr c 1 3 && chmod 0666 blk chr
			mkfifo fifo
			cp /bin/busybox suid && chmod 4755 suid
			echo g > sgid && chmod 2755 sgid
			mkdir sgdir && chmod 2775 sgdir
			echo u > u1000 && chown 1000:1000 u1000
			truncate -s 512M /tmp/sparse/big`)
		me := uint32(os.Geteuid())
		check := func(t *testing.T, dir string, archive bool, errs string) {
			t.Helper()
			for _, want := range []string{"skipped hostile/blk: block device 8:0", "skipped hostile/chr: character device 1:3", "skipped hostile/fifo: FIFO"} {
				if !strings.Contains(errs, want) {
					t.Errorf("stderr lacks %q:\n%s", want, errs)
				}
			}
			for _, name := range []string{"blk", "chr", "fifo"} {
				if _, err := os.Lstat(filepath.Join(dir, "hostile", name)); !os.IsNotExist(err) {
					t.Errorf("%s was created on the host (%v)", name, err)
				}
			}
			for name, owner := range map[string]uint32{"suid": 0, "sgid": 0, "sgdir": 0, "u1000": 1000} {
				var st syscall.Stat_t
				if err := syscall.Lstat(filepath.Join(dir, "hostile", name), &st); err != nil {
					t.Fatal(err)
				}
				if st.Mode&(syscall.S_ISUID|syscall.S_ISGID) != 0 {
					t.Errorf("%s has mode %o on the host: set-id bit kept", name, st.Mode)
				}
				if !archive {
					owner = me
				}
				if st.Uid != owner {
					t.Errorf("%s is owned by uid %d on the host, want %d (archive %v)", name, st.Uid, owner, archive)
				}
			}
			if b, err := os.ReadFile(filepath.Join(dir, "hostile", "suid")); err != nil || len(b) < 100000 {
				t.Errorf("suid copy: %d bytes, %v", len(b), err)
			}
		}
		dest := t.TempDir()
		out, errs, code := e.run(nil, "cp", "svc:/tmp/hostile", dest)
		if code != 0 {
			t.Fatalf("cp: exit %d\n%s%s", code, out, errs)
		}
		check(t, dest, false, errs)
		if os.Geteuid() == 0 {
			dest = t.TempDir()
			out, errs, code = e.run(nil, "cp", "-a", "svc:/tmp/hostile", dest)
			if code != 0 {
				t.Fatalf("cp -a: exit %d\n%s%s", code, out, errs)
			}
			check(t, dest, true, errs)
		}

		dest = t.TempDir()
		start := time.Now()
		e.ok("cp", "svc:/tmp/sparse/big", dest)
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(dest, "big"), &st); err != nil {
			t.Fatal(err)
		}
		if st.Size != 512<<20 || st.Blocks*512 > 1<<20 {
			t.Fatalf("512 MiB sparse file copied out: size %d, %d bytes allocated (want 512 MiB, under 1 MiB allocated)", st.Size, st.Blocks*512)
		}
		t.Logf("512 MiB sparse file copied out in %s, %d bytes allocated", time.Since(start).Round(time.Millisecond), st.Blocks*512)
	})

	t.Run("hostile tar into the box is refused", func(t *testing.T) {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		body := []byte("pwned\n")
		_ = tw.WriteHeader(&tar.Header{Name: "../../../../etc/pwned", Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
		_, _ = tw.Write(body)
		_ = tw.Close()
		sock := filepath.Join(e.boxDir("svc"), "agent.sock")
		c, err := agentclient.Dial(context.Background(), sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = c.Upload(context.Background(), "/tmp/in", &buf, agentclient.UploadOptions{})
		if err == nil || !agentclient.IsEscape(err) {
			t.Fatalf("upload of ../../../../etc/pwned: %v, want a refusal", err)
		}
		if _, _, code := e.run(nil, "exec", "svc", "--", "test", "-e", "/etc/pwned"); code == 0 {
			t.Fatal("the hostile entry was written outside the destination")
		}
	})

	t.Run("stats and logs", func(t *testing.T) {
		out := e.ok("stats", "svc")
		if !strings.Contains(out, "svc") || !strings.Contains(out, "MiB") {
			t.Fatalf("stats: %q", out)
		}
		if logs := e.ok("logs", "svc"); !strings.Contains(logs, "boxctl-agent") {
			t.Fatalf("logs lack the agent's banner: %q", logs)
		}
	})

	t.Run("files persist across stop and start", func(t *testing.T) {
		e.ok("exec", "svc", "--", "sh", "-c", "echo kept > /root/state")
		e.ok("stop", "svc")
		if st := strings.TrimSpace(e.ok("ls", "-a", "--format", "{{.Status}}")); st != "stopped" {
			t.Fatalf("after stop: %s", st)
		}
		e.ok("start", "svc")
		if out := e.ok("exec", "svc", "--", "cat", "/root/state"); out != "kept\n" {
			t.Fatalf("after restart: %q", out)
		}
	})

	t.Run("kill -9 of QEMU leaves the box stopped with the exit recorded", func(t *testing.T) {
		pidb, err := os.ReadFile(filepath.Join(e.boxDir("svc"), "qemu.pid"))
		if err != nil {
			t.Fatal(err)
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(pidb)))
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			st := strings.TrimSpace(e.ok("ls", "-a", "--format", "{{.Status}} {{with .Run}}{{with .Exit}}{{.Code}}{{end}}{{end}}"))
			if st == "stopped 137" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after kill -9 of QEMU: %q", st)
			}
			time.Sleep(200 * time.Millisecond)
		}
		e.ok("start", "svc")
		if out := e.ok("exec", "svc", "--", "cat", "/root/state"); out != "kept\n" {
			t.Fatalf("after restart: %q", out)
		}
	})

	t.Run("stop of an unresponsive guest falls back to the VMM", func(t *testing.T) {
		e.ok("pause", "svc")
		start := time.Now()
		e.ok("stop", "-t", "2", "svc")
		took := time.Since(start)
		out := strings.TrimSpace(e.ok("ls", "-a", "--format", "{{.Status}}"))
		if out != "stopped" {
			t.Fatalf("after stop of a paused box: %s", out)
		}
		t.Logf("stop -t 2 of an unresponsive guest took %s", took)
	})

	t.Run("images in use cannot be removed without force", func(t *testing.T) {
		if out := e.ok("images"); !strings.Contains(out, e.image) || !strings.Contains(out, "linux/amd64") {
			t.Fatalf("images: %s", out)
		}
		_, errs, code := e.run(nil, "rmi", e.image)
		if code != 125 || !strings.Contains(errs, "used by box(es) svc") {
			t.Fatalf("rmi of an image in use: exit %d %s", code, errs)
		}
	})

	e.ok("rm", "svc")
	e.ok("rmi", e.image)
	if out := e.ok("images", "-q"); strings.TrimSpace(out) != "" {
		t.Fatalf("images after rmi: %q", out)
	}
}

func TestStartFailureSaysWhatFailedAndCleansUp(t *testing.T) {
	e := newEnv(t)
	// Readable by others: a root boxctl's QEMU runs as the box's own user.
	junkDir := testbin.ShortTempDir(t)
	if err := os.Chmod(junkDir, 0o755); err != nil {
		t.Fatal(err)
	}
	junk := filepath.Join(junkDir, "not-a-kernel")
	if err := os.WriteFile(junk, []byte("this is not a kernel\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "config.hcl")
	hcl := fmt.Sprintf("plugin \"qemu\" {\n  config {\n    kernel = %q\n    initrd = %q\n  }\n}\n", junk, filepath.Join(e.guest, "initramfs"))
	if err := os.WriteFile(cfg, []byte(hcl), 0o644); err != nil {
		t.Fatal(err)
	}
	e.ok("--config", cfg, "create", "--name", "broken", e.image)
	_, errs, code := e.run(nil, "--config", cfg, "start", "broken")
	if code != 125 || !strings.Contains(errs, "console log: ") || !strings.Contains(errs, "exited during boot") {
		t.Fatalf("start with a broken kernel: exit %d\n%s", code, errs)
	}
	out := strings.TrimSpace(e.ok("--config", cfg, "ls", "-a", "--format", "{{.Status}}|{{.Error}}"))
	if !strings.HasPrefix(out, "stopped|start failed") && !strings.HasPrefix(out, "configured|start failed") {
		t.Fatalf("box after a failed start: %q", out)
	}
	if out, _ := exec.Command("pgrep", "-f", e.home).Output(); len(out) > 0 {
		t.Fatalf("processes left behind after a failed start: %s", out)
	}
	// With a working kernel the same box starts.
	e.ok("start", "broken")
	e.ok("rm", "-f", "broken")
}

func md5hex(b []byte) string {
	return fmt.Sprintf("%x", md5sum(b))
}

func TestHealthCheck(t *testing.T) {
	e := newEnv(t)
	e.ok("run", "-d", "--name", "hc", "--health-cmd", "test -f /tmp/healthy",
		"--health-interval", "300ms", "--health-timeout", "5s", "--health-retries", "2", e.image)
	health := func() string {
		return strings.TrimSpace(e.ok("ls", "--format", "{{.Health.Status}} {{.Health.FailingStreak}}"))
	}
	waitFor := func(want string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			h := health()
			if strings.HasPrefix(h, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("health never became %q (last %q)", want, h)
			}
			time.Sleep(150 * time.Millisecond)
		}
	}
	waitFor("unhealthy")
	e.ok("exec", "hc", "--", "touch", "/tmp/healthy")
	waitFor("healthy 0")
	if out := e.ok("ls"); !strings.Contains(out, "(healthy)") {
		t.Fatalf("ls does not show the health: %s", out)
	}
	e.ok("rm", "-f", "hc")
}

func TestNetworking(t *testing.T) {
	e := newEnv(t)
	// A server only on the host's loopback: not for boxes unless allowed.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, "hello-from-host")
	}))
	defer srv.Close()
	hostPort := srv.Listener.Addr().(*net.TCPAddr).Port
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	published := l.Addr().(*net.TCPAddr).Port
	l.Close()

	e.ok("run", "-d", "--name", "net", "-p", fmt.Sprintf("127.0.0.1:%d:8000", published), e.image)
	// Closed by default: through the gateway, and through the host's own
	// addresses. A root shell in the guest cannot get around it: the
	// connections are made by the host side's network stack.
	if out, errs, code := e.run(nil, "exec", "net", "--", "wget", "-qO-", fmt.Sprintf("http://10.0.2.2:%d/", hostPort)); code == 0 || strings.Contains(out, "hello-from-host") {
		t.Fatalf("box reached a service on the host's loopback without --allow-host-loopback: exit %d %q %q", code, out, errs)
	}
	for _, addr := range hostAddrs(t) {
		l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
		if err != nil {
			continue
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				fmt.Fprint(c, "host-address-reached\n")
				c.Close()
			}
		}()
		port := l.Addr().(*net.TCPAddr).Port
		out, _, code := e.run(nil, "exec", "net", "--", "sh", "-c", fmt.Sprintf("nc -w 5 %s %d </dev/null", addr, port))
		l.Close()
		if code == 0 && strings.Contains(out, "host-address-reached") {
			t.Fatalf("box reached the host's own address %s", addr)
		}
	}
	if out := e.ok("exec", "net", "--", "cat", "/etc/resolv.conf"); !strings.Contains(out, "10.0.2.3") {
		t.Fatalf("resolv.conf: %q", out)
	}
	e.ok("exec", "-d", "net", "--", "sh", "-c", "mkdir -p /www && echo hello-from-box > /www/index.html && exec httpd -f -p 8000 -h /www")
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", published))
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.TrimSpace(string(body)) == "hello-from-box" {
				break
			}
			err = fmt.Errorf("status %s body %q", resp.Status, body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("host to box through -p: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The published port is taken now: a second box asking for it fails
	// to start and says so.
	_, errs, code := e.run(nil, "run", "--rm", "-p", fmt.Sprintf("127.0.0.1:%d:80", published), e.image, "--", "true")
	if code != 125 || !strings.Contains(errs, "already in use") {
		t.Fatalf("run with a published port in use: exit %d: %s", code, errs)
	}
	if _, errs, code := e.run(nil, "create", "-p", "80", e.image); code != 125 || !strings.Contains(errs, "HOSTPORT:BOXPORT") {
		t.Fatalf("bad -p: %d %s", code, errs)
	}
	e.ok("rm", "-f", "net")

	// Opened on request.
	out := e.ok("run", "--rm", "--allow-host-loopback", e.image, "--", "wget", "-qO-", fmt.Sprintf("http://10.0.2.2:%d/", hostPort))
	if out != "hello-from-host" {
		t.Fatalf("box to host with --allow-host-loopback: %q", out)
	}
}

// hostAddrs lists this host's own non-loopback IPv4 addresses.
func hostAddrs(t *testing.T) []string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && !ipn.IP.IsLoopback() {
			out = append(out, ipn.IP.String())
		}
	}
	return out
}
