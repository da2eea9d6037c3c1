// Command api measures boxctl serve: the round trip of `true` through the
// API (one-shot POST /v1/boxes/{id}/exec and a WebSocket exec stream)
// against the same exec through the Go API (rt.Exec) on one running box,
// interleaved so that load from other work hits all alike; and requests per
// second of GET /v1/boxes over a home of 1,000 boxes (created, not
// started). The server runs as its own process on its unix socket. The box
// runs on the procvmm test double (no VM: the agent round trip is a local
// socket), so the differences are the API's own cost. Build first: make
// build build-test-plugins.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/boxctl/boxctl/api"
	"github.com/boxctl/boxctl/api/apiclient"
	"github.com/boxctl/boxctl/bench/internal/benchhome"
	"github.com/boxctl/boxctl/bench/internal/stat"
	"github.com/boxctl/boxctl/core"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding boxctl and its plugins")
	testPlugins := flag.String("test-plugins", "build/test-plugins", "directory holding boxctl-plugin-procvmm")
	n := flag.Int("n", 40, "execs measured of each kind")
	boxes := flag.Int("boxes", 1000, "boxes in the home for the list benchmark")
	listFor := flag.Duration("list-for", 5*time.Second, "how long to measure GET /v1/boxes")
	clients := flag.Int("clients", 4, "concurrent clients of GET /v1/boxes")
	guest := flag.String("guest", "", "guest kernel and initramfs directory (e.g. build/guest): also measure exec on a real VM")
	flag.Parse()
	if err := run(*bin, *testPlugins, *n, *boxes, *listFor, *clients); err != nil {
		fmt.Fprintln(os.Stderr, "bench/api:", err)
		os.Exit(1)
	}
	if *guest != "" {
		if err := runVM(*bin, *guest, *n); err != nil {
			fmt.Fprintln(os.Stderr, "bench/api:", err)
			os.Exit(1)
		}
	}
}

func run(binDir, testPlugins string, n, nBoxes int, listFor time.Duration, clients int) error {
	ctx := context.Background()
	h, err := benchhome.NewWithDouble(binDir, testPlugins, "bxapi")
	if err != nil {
		return err
	}
	defer h.Close()
	image := h.Image
	rt, err := h.Runtime(ctx)
	if err != nil {
		return err
	}
	defer rt.Close()
	if _, err := rt.Pull(ctx, image, "", nil); err != nil {
		return err
	}
	box, err := rt.Create(ctx, benchBox(image, "bench"))
	if err != nil {
		return err
	}
	if err := rt.Start(ctx, box.ID(), core.Detach(true)); err != nil {
		return err
	}
	defer rt.Remove(context.WithoutCancel(ctx), box.ID(), core.RemoveOptions{Force: true}) //nolint:errcheck

	sock, stop, err := serve(h.Boxctl, h.Args(), append(h.Env(), "BOXCTL_LOG="))
	if err != nil {
		return err
	}
	defer stop()
	c := apiclient.Unix(sock)
	defer c.Close()

	fmt.Println("== boxctl serve: API overhead (procvmm box: no VM; server on its unix socket) ==")
	if err := compareExec(ctx, rt, c, "bench", n); err != nil {
		return err
	}
	// A home of nBoxes boxes, created and never started.
	t := time.Now()
	for i := 0; i < nBoxes; i++ {
		if _, err := rt.Create(ctx, benchBox(image, fmt.Sprintf("idle-%04d", i))); err != nil {
			return err
		}
	}
	created := time.Since(t)
	t = time.Now()
	list, err := rt.List(ctx)
	if err != nil {
		return err
	}
	goList := time.Since(t)
	got, err := c.Boxes(ctx)
	if err != nil {
		return err
	}
	if len(got) != len(list) {
		return fmt.Errorf("GET /v1/boxes listed %d boxes, want %d", len(got), len(list))
	}
	var reqs, bodyBytes atomic.Int64
	var firstErr error
	var once sync.Once
	deadline := time.Now().Add(listFor)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				// The body is read, not decoded: this measures the server.
				resp, err := c.Raw(ctx, "GET", "/v1/boxes", nil, "")
				if err == nil {
					var n int64
					n, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					bodyBytes.Store(n)
				}
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				reqs.Add(1)
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	elapsed := time.Since(start)
	fmt.Printf("GET /v1/boxes, %d boxes (%d KiB), %d clients: %.1f requests/s (%d in %s); Go rt.List once: %s; creating them took %s\n",
		len(list), bodyBytes.Load()>>10, clients, float64(reqs.Load())/elapsed.Seconds(), reqs.Load(), elapsed.Round(time.Millisecond), goList.Round(time.Millisecond), created.Round(time.Millisecond))
	return nil
}

func benchBox(image, name string) core.BoxOptions {
	o := core.BoxOptions{Name: name}
	o.Config.Image = image
	o.Config.Detach = true
	return o
}

// compareExec prints the round trip of `true` in box ref through the Go
// API, one-shot API execs and WebSocket exec streams, interleaved.
func compareExec(ctx context.Context, rt *core.Runtime, c *apiclient.Client, ref string, n int) error {
	goExec := func() error {
		res, err := rt.Exec(ctx, ref, core.ExecOptions{Argv: []string{"true"}})
		if err == nil && res.ExitCode != 0 {
			err = fmt.Errorf("exit %d", res.ExitCode)
		}
		return err
	}
	oneShot := func() error {
		res, err := c.Exec(ctx, ref, api.ExecRequest{Cmd: []string{"true"}})
		if err == nil && res.ExitCode != 0 {
			err = fmt.Errorf("exit %d", res.ExitCode)
		}
		return err
	}
	stream := func() error {
		s, err := c.ExecStream(ctx, ref, url.Values{"cmd": {"true"}}, nil, nil)
		if err != nil {
			return err
		}
		code, err := s.Wait(ctx)
		if err == nil && code != 0 {
			err = fmt.Errorf("exit %d", code)
		}
		return err
	}
	kinds := []func() error{goExec, oneShot, stream}
	for i := 0; i < 3; i++ { // warm up
		for _, k := range kinds {
			if err := k(); err != nil {
				return err
			}
		}
	}
	times := make([][]time.Duration, len(kinds))
	for i := 0; i < n; i++ {
		for j, k := range kinds {
			t := time.Now()
			if err := k(); err != nil {
				return err
			}
			times[j] = append(times[j], time.Since(t))
		}
	}
	r := func(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
	mg := stat.Median(times[0])
	fmt.Printf("exec true, Go API (rt.Exec):             median %s (min %s) over %d\n", r(mg), r(stat.Min(times[0])), n)
	for j, name := range []string{"", "exec true, POST /v1/boxes/{id}/exec:   ", "exec true, WebSocket /exec/ws:          "} {
		if j == 0 {
			continue
		}
		m := stat.Median(times[j])
		fmt.Printf("%smedian %s (min %s); %.2fx the Go API\n", name, r(m), r(stat.Min(times[j])), float64(m)/float64(mg))
	}

	return nil
}

// serve starts `boxctl serve` on its unix socket and returns the socket and
// a function that stops the server (SIGTERM).
func serve(boxctl string, global, env []string) (string, func(), error) {
	srv := exec.Command(boxctl, append(global, "serve")...)
	srv.Env = env
	out, err := srv.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		return "", nil, err
	}
	stop := func() {
		_ = srv.Process.Signal(syscall.SIGTERM)
		_ = srv.Wait()
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		stop()
		return "", nil, fmt.Errorf("boxctl serve: %w", err)
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	return strings.TrimSpace(strings.TrimPrefix(line, "boxctl serve: listening on unix:")), stop, nil
}

// runVM compares the execs on a real VM (QEMU, the given guest).
func runVM(binDir, guestDir string, n int) error {
	ctx := context.Background()
	h, err := benchhome.New(binDir, guestDir, "bxapivm")
	if err != nil {
		return err
	}
	defer h.Close()
	if _, err := h.CLI("run", "-d", "--name", "bench", h.Image); err != nil {
		return err
	}
	defer h.CLI("rm", "-f", "bench") //nolint:errcheck
	rt, err := h.Runtime(ctx)
	if err != nil {
		return err
	}
	defer rt.Close()
	sock, stop, err := serve(h.Boxctl, h.Args(), append(h.Env(), "BOXCTL_LOG="))
	if err != nil {
		return err
	}
	defer stop()
	c := apiclient.Unix(sock)
	defer c.Close()
	fmt.Println("== boxctl serve on a real VM (QEMU) ==")
	return compareExec(ctx, rt, c, "bench", n)
}
