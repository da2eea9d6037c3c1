// Package dockerregistry runs a real registry for tests: Debian's docker-registry (the
// reference implementation of the OCI distribution spec), on loopback, over plain HTTP,
// with its storage in a temporary directory. It fails the test (does not skip) when the
// program is missing: install it with `apt-get install docker-registry`.
package dockerregistry

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Program is the registry binary looked up in PATH.
const Program = "docker-registry"

// Registry is a running registry.
type Registry struct {
	// Host is "127.0.0.1:PORT"; references are Host + "/repo:tag".
	Host string
	// Dir holds its storage.
	Dir string

	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

// Start starts a registry that lives until the test ends.
func Start(t testing.TB) *Registry {
	t.Helper()
	bin, err := exec.LookPath(Program)
	if err != nil {
		t.Fatalf("%s not found: install it (apt-get install docker-registry) to run the registry tests", Program)
	}
	dir := t.TempDir()
	// The port is picked by listening and closing: another process may take it in between,
	// so a registry that cannot bind is started again on another.
	var lastErr error
	for range 3 {
		r, err := start(bin, dir)
		if err == nil {
			t.Cleanup(r.stop)
			return r
		}
		lastErr = err
	}
	t.Fatalf("start %s: %v", Program, lastErr)
	return nil
}

func start(bin, dir string) (*Registry, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	host := l.Addr().String()
	l.Close()
	storage := filepath.Join(dir, "storage")
	if err := os.MkdirAll(storage, 0o755); err != nil {
		return nil, err
	}
	config := filepath.Join(dir, "config-"+portOf(host)+".yml")
	body := fmt.Sprintf(`version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, storage, host)
	if err := os.WriteFile(config, []byte(body), 0o644); err != nil {
		return nil, err
	}
	r := &Registry{Host: host, Dir: storage, out: &syncBuffer{}, done: make(chan struct{})}
	r.cmd = exec.Command(bin, "serve", config)
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	if err := r.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		_ = r.cmd.Wait()
		close(r.done)
	}()
	deadline := time.Now().Add(30 * time.Second)
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		select {
		case <-r.done:
			return nil, fmt.Errorf("%s exited at start: %s", Program, r.out.String())
		default:
		}
		if resp, err := client.Get("http://" + host + "/v2/"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return r, nil
			}
		}
		if time.Now().After(deadline) {
			r.stop()
			return nil, fmt.Errorf("%s did not answer on %s within 30s: %s", Program, host, r.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Ref returns the reference of repo[:tag] on this registry.
func (r *Registry) Ref(repoTag string) string { return r.Host + "/" + repoTag }

// Log returns what the registry printed.
func (r *Registry) Log() string { return r.out.String() }

func (r *Registry) stop() {
	select {
	case <-r.done:
		return
	default:
	}
	_ = r.cmd.Process.Kill()
	<-r.done
}

func portOf(host string) string {
	_, p, _ := net.SplitHostPort(host)
	if _, err := strconv.Atoi(p); err != nil {
		return "x"
	}
	return p
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
