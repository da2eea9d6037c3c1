package e2e

import (
	"bufio"
	"context"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/boxctl/boxctl/api"
	"github.com/boxctl/boxctl/api/apiclient"
	"github.com/boxctl/boxctl/core/model"
)

// syncBuffer is an io.Writer whose contents can be read while it is written.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) expect(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(s.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("never saw %q; output:\n%s", want, s.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAPIOnARealVM runs `boxctl serve` on its unix socket over one real
// VM: a box created and started through the API, a one-shot exec, a
// streaming exec on a terminal with stdin and a resize, a client that
// vanishes mid-exec (its command is killed in the guest), and SIGTERM,
// after which the box still runs.
func TestAPIOnARealVM(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	srv := e.command(ctx, "serve", "--shutdown-timeout", "1s")
	out, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var srvErr syncBuffer
	srv.Stderr = &srvErr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if srv.ProcessState == nil {
			_ = srv.Process.Kill()
			_ = srv.Wait()
		}
	}()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("boxctl serve: %v: %s", err, srvErr.String())
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	sock := strings.TrimSpace(strings.TrimPrefix(line, "boxctl serve: listening on unix:"))
	if sock != filepath.Join(e.home, "api.sock") {
		t.Fatalf("serve printed %q", line)
	}
	c := apiclient.Unix(sock)
	defer c.Close()

	box, err := c.CreateBox(ctx, api.CreateBoxRequest{Image: e.image, Name: "apivm", Pull: true, Start: true})
	if err != nil {
		t.Fatalf("create and start: %v%s", err, e.consoleTail())
	}
	if box.Status != model.StatusRunning || !box.Run.Detached {
		t.Fatalf("box after create with start: %s detached=%v", box.Status, box.Run != nil && box.Run.Detached)
	}
	res, err := c.Exec(ctx, "apivm", api.ExecRequest{Cmd: []string{"sh", "-c", "cat; uname -s"}, Stdin: "in\n"})
	if err != nil || res.ExitCode != 0 || res.Stdout != "in\nLinux\n" {
		t.Fatalf("one-shot exec: %+v %v", res, err)
	}

	t.Run("terminal with stdin and resize", func(t *testing.T) {
		var term syncBuffer
		q := url.Values{"cmd": {"sh"}, "tty": {"1"}, "stdin": {"1"}, "cols": {"80"}, "rows": {"24"}}
		st, err := c.ExecStream(ctx, "apivm", q, &term, &term)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if err := st.Stdin(ctx, []byte("stty size\n")); err != nil {
			t.Fatal(err)
		}
		term.expect(t, "24 80")
		if err := st.Control(ctx, api.Control{Type: "resize", Cols: 132, Rows: 43}); err != nil {
			t.Fatal(err)
		}
		if err := st.Stdin(ctx, []byte("stty size\n")); err != nil {
			t.Fatal(err)
		}
		term.expect(t, "43 132")
		if err := st.Stdin(ctx, []byte("exit 5\n")); err != nil {
			t.Fatal(err)
		}
		if code, err := st.Wait(ctx); err != nil || code != 5 {
			t.Fatalf("terminal exec ended with %d %v; output:\n%s", code, err, term.String())
		}
	})

	t.Run("a vanished client's command is killed", func(t *testing.T) {
		pr, pw := io.Pipe()
		st, err := c.ExecStream(ctx, "apivm", url.Values{"cmd": {"sh", "-c", "echo $$; exec sleep 600"}}, pw, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		first, err := bufio.NewReader(pr).ReadString('\n')
		go func() { _, _ = io.Copy(io.Discard, pr) }()
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(first))
		if err != nil {
			t.Fatalf("PID line %q", first)
		}
		alive := func() bool {
			r, err := c.Exec(ctx, "apivm", api.ExecRequest{Cmd: []string{"kill", "-0", strconv.Itoa(pid)}})
			if err != nil {
				t.Fatal(err)
			}
			return r.ExitCode == 0
		}
		if !alive() {
			t.Fatalf("the command %d is not running before its client goes", pid)
		}
		st.Abandon()
		deadline := time.Now().Add(15 * time.Second)
		for alive() {
			if time.Now().After(deadline) {
				t.Fatalf("the command %d still runs 15s after its client vanished", pid)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	_ = srv.Process.Signal(syscall.SIGTERM)
	if err := srv.Wait(); err != nil {
		t.Fatalf("serve after SIGTERM: %v: %s", err, srvErr.String())
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("the socket outlived the server: %v", err)
	}
	if got := strings.TrimSpace(e.ok("exec", "apivm", "--", "echo", "alive")); got != "alive" {
		t.Fatalf("the box after the server stopped: %q", got)
	}
	e.ok("rm", "-f", "apivm")
}
