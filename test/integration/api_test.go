package integration

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
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

// server is a running `boxctl serve`.
type server struct {
	cmd    *exec.Cmd
	where  string // what it printed after "listening on "
	stderr *bytes.Buffer
}

// serve starts `boxctl serve` on the env's home and waits until it listens.
func (e *env) serve(args ...string) *server {
	e.t.Helper()
	cmd := e.boxctlCmd(context.Background(), append([]string{"serve"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	s := &server{cmd: cmd, stderr: &bytes.Buffer{}}
	cmd.Stderr = s.stderr
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			line <- sc.Text()
		}
		close(line)
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case l, ok := <-line:
		if !ok {
			_ = cmd.Wait()
			e.t.Fatalf("boxctl serve %v exited: %s", args, s.stderr)
		}
		s.where = strings.TrimPrefix(l, "boxctl serve: listening on ")
	case <-time.After(30 * time.Second):
		e.t.Fatalf("boxctl serve %v did not listen within 30s: %s", args, s.stderr)
	}
	return s
}

// stop sends SIGTERM and waits for the server to exit.
func (s *server) stop(t *testing.T) {
	t.Helper()
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("boxctl serve after SIGTERM: %v: %s", err, s.stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("boxctl serve did not exit within 30s of SIGTERM: %s", s.stderr)
	}
}

func (e *env) unixClient(s *server) *apiclient.Client {
	e.t.Helper()
	sock := strings.TrimPrefix(s.where, "unix:")
	st, err := os.Stat(sock)
	if err != nil {
		e.t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		e.t.Fatalf("the API socket %s has mode %s, want a socket with 0600", sock, st.Mode())
	}
	c := apiclient.Unix(sock)
	e.t.Cleanup(c.Close)
	return c
}

func wantCode(t *testing.T, err error, code, what string) {
	t.Helper()
	if apiclient.Code(err) != code {
		t.Fatalf("%s: error %v, want code %s", what, err, code)
	}
}

// TestAPIEveryRoute drives every route of `boxctl serve` over its unix
// socket, on boxes of the procvmm double.
func TestAPIEveryRoute(t *testing.T) {
	e := newEnv(t, "")
	srv := e.serve()
	c := e.unixClient(srv)
	ctx := context.Background()
	seen := map[string]bool{}
	do := func(method, route, path string, body, out any) (int, error) {
		t.Helper()
		seen[method+" "+route] = true
		return c.Do(ctx, method, path, body, out)
	}

	var health api.Health
	if _, err := do("GET", "/v1/health", "/v1/health", nil, &health); err != nil || health.Status != "ok" || health.Home != e.home {
		t.Fatalf("health: %+v %v", health, err)
	}
	var doc map[string]any
	if _, err := do("GET", "/openapi.json", "/openapi.json", nil, &doc); err != nil || doc["openapi"] != "3.0.3" {
		t.Fatalf("openapi.json: %v %v", doc["openapi"], err)
	}

	// Images: pull with progress, list.
	seen["POST /v1/images/pull"] = true
	var events []api.PullEvent
	img, err := c.Pull(ctx, testImage, func(ev api.PullEvent) { events = append(events, ev) })
	if err != nil {
		t.Fatal(err)
	}
	if img.Digest == "" || len(events) < 2 || events[len(events)-1].Type != "done" {
		t.Fatalf("pull: image %+v after events %+v", img, events)
	}
	_, err = c.Pull(ctx, "oci-layout:/nonexistent", nil)
	wantCode(t, err, api.CodeNotFound, "pull of a missing layout")
	var images api.ImageList
	if _, err := do("GET", "/v1/images", "/v1/images", nil, &images); err != nil || len(images.Images) != 1 || images.Images[0].Digest != img.Digest {
		t.Fatalf("images: %+v %v", images, err)
	}

	// Boxes: create with the CLI's options, refusals, get, list.
	seen["POST /v1/boxes"] = true
	web, err := c.CreateBox(ctx, api.CreateBoxRequest{
		Image: testImage, Name: "web", Env: []string{"GREETING=hi"}, Labels: map[string]string{"app": "web"},
		Memory: "256MiB", CPUs: 1, Workdir: "/", Health: &api.HealthCheck{Cmd: "true", Interval: "1h"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if web.Status != model.StatusConfigured || !web.Config.Detach || web.Config.MemoryMiB != 256 || web.Config.Health == nil {
		t.Fatalf("created box: %+v", web)
	}
	_, err = c.CreateBox(ctx, api.CreateBoxRequest{Image: testImage, Name: "web"})
	wantCode(t, err, api.CodeAlreadyExists, "a second box named web")
	for _, bad := range []api.CreateBoxRequest{{}, {Image: testImage, Memory: "lots"}, {Image: testImage, Ports: []string{"80"}}, {Image: testImage, Volumes: []string{"./rel:/x"}}, {Image: testImage, CPUs: 999}} {
		_, err = c.CreateBox(ctx, bad)
		wantCode(t, err, api.CodeInvalidArgument, fmt.Sprintf("create %+v", bad))
	}
	_, err = do("POST", "/v1/boxes", "/v1/boxes", map[string]any{"image": testImage, "colour": "red"}, nil)
	wantCode(t, err, api.CodeInvalidArgument, "an unknown field")
	_, err = do("POST", "/v1/boxes", "/v1/boxes", strings.NewReader(`{"image": "`+strings.Repeat("x", 2<<20)+`"}`), nil)
	wantCode(t, err, api.CodeTooLarge, "a 2 MiB body")
	_, err = do("GET", "/v1/boxes/{id}", "/v1/boxes/nobox", nil, nil)
	wantCode(t, err, api.CodeNotFound, "get nobox")
	_, err = c.Do(ctx, "GET", "/v1/nothing", nil, nil)
	wantCode(t, err, api.CodeNotFound, "an unknown route")
	var got api.Box
	if _, err := do("GET", "/v1/boxes/{id}", "/v1/boxes/"+web.ID[:8], nil, &got); err != nil || got.Name != "web" {
		t.Fatalf("get by ID prefix: %+v %v", got, err)
	}
	if _, err := c.CreateBox(ctx, api.CreateBoxRequest{Image: testImage, Name: "other"}); err != nil {
		t.Fatal(err)
	}
	var list api.BoxList
	if _, err := do("GET", "/v1/boxes", "/v1/boxes?label=app=web", nil, &list); err != nil || len(list.Boxes) != 1 || list.Boxes[0].Name != "web" {
		t.Fatalf("list by label: %+v %v", list, err)
	}

	// Lifecycle and exec.
	var started api.Box
	if _, err := do("POST", "/v1/boxes/{id}/start", "/v1/boxes/web/start", nil, &started); err != nil || started.Status != model.StatusRunning || !started.Run.Detached {
		t.Fatalf("start: %+v %v", started, err)
	}
	seen["POST /v1/boxes/{id}/exec"] = true
	res, err := c.Exec(ctx, "web", api.ExecRequest{Cmd: []string{"sh", "-c", "echo $GREETING; cat; echo err >&2; exit 3"}, Stdin: "input\n"})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 3 || res.Stdout != "hi\ninput\n" || res.Stderr != "err\n" {
		t.Fatalf("exec: %+v", res)
	}
	if res, err = c.Exec(ctx, "web", api.ExecRequest{Cmd: []string{"sleep", "5"}, TimeoutSeconds: 0.3}); err != nil {
		t.Fatal(err)
	}
	if !res.TimedOut {
		t.Fatalf("exec with a timeout: %+v", res)
	}
	if res, err = c.Exec(ctx, "web", api.ExecRequest{Cmd: []string{"sleep", "0.1"}, Detach: true}); err != nil || res.PID == 0 {
		t.Fatalf("detached exec: %+v %v", res, err)
	}
	_, err = c.Exec(ctx, "web", api.ExecRequest{Cmd: []string{"true"}, TTY: true})
	wantCode(t, err, api.CodeInvalidArgument, "one-shot exec with a tty")
	seen["GET /v1/boxes/{id}/exec/ws"] = true
	var out, errb bytes.Buffer
	q := url.Values{"cmd": {"sh", "-c", "cat; echo done >&2; exit 7"}, "stdin": {"1"}}
	st, err := c.ExecStream(ctx, "web", q, &out, &errb)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Stdin(ctx, []byte("streamed\n")); err != nil {
		t.Fatal(err)
	}
	if err := st.Control(ctx, api.Control{Type: "close_stdin"}); err != nil {
		t.Fatal(err)
	}
	if code, err := st.Wait(ctx); err != nil || code != 7 || out.String() != "streamed\n" || errb.String() != "done\n" {
		t.Fatalf("streaming exec: exit %d %v, stdout %q, stderr %q", code, err, out.String(), errb.String())
	}
	// A signal frame reaches the command.
	sigOut := &lockedBuffer{}
	st, err = c.ExecStream(ctx, "web", url.Values{"cmd": {"sh", "-c", "trap 'echo got TERM; exit 3' TERM; echo ready; while :; do sleep 0.05; done"}}, sigOut, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(sigOut.String(), "ready"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the trapping command never got ready: %q", sigOut.String())
		}
	}
	if err := st.Control(ctx, api.Control{Type: "signal", Signal: int(syscall.SIGTERM)}); err != nil {
		t.Fatal(err)
	}
	if code, err := st.Wait(ctx); err != nil || code != 3 || !strings.Contains(sigOut.String(), "got TERM") {
		t.Fatalf("signalled exec: exit %d %v, output %q", code, err, sigOut.String())
	}
	_, err = c.ExecStream(ctx, "nobox", url.Values{"cmd": {"true"}}, nil, nil)
	wantCode(t, err, api.CodeNotFound, "streaming exec in nobox")

	// Files.
	seen["PUT /v1/boxes/{id}/files"] = true
	seen["GET /v1/boxes/{id}/files"] = true
	resp, err := c.Raw(ctx, "PUT", "/v1/boxes/web/files?path=/srv/hello.txt&mode=0600", strings.NewReader("hello file\n"), "")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	resp, err = c.Raw(ctx, "GET", "/v1/boxes/web/files?path=/srv/hello.txt&format=raw", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if data, _ := io.ReadAll(resp.Body); string(data) != "hello file\n" {
		t.Fatalf("raw download: %q", data)
	}
	resp.Body.Close()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	_ = tw.WriteHeader(&tar.Header{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o755})
	_ = tw.WriteHeader(&tar.Header{Name: "d/a", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3})
	_, _ = tw.Write([]byte("aaa"))
	_ = tw.Close()
	resp, err = c.Raw(ctx, "PUT", "/v1/boxes/web/files?path=/srv", &tb, "application/x-tar")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	resp, err = c.Raw(ctx, "GET", "/v1/boxes/web/files?path=/srv/d", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(resp.Body)
	var names []string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, h.Name)
	}
	resp.Body.Close()
	if strings.Join(names, ",") != "d,d/a" && strings.Join(names, ",") != "d/,d/a" {
		t.Fatalf("tar download of /srv/d: %v", names)
	}
	var fi api.FileInfo
	if _, err := do("GET", "/v1/boxes/{id}/files/stat", "/v1/boxes/web/files/stat?path=/srv/hello.txt", nil, &fi); err != nil || fi.Type != "file" || fi.Size != 11 || fi.Mode != "0600" {
		t.Fatalf("stat: %+v %v", fi, err)
	}
	var fl api.FileList
	if _, err := do("GET", "/v1/boxes/{id}/files/list", "/v1/boxes/web/files/list?path=/srv", nil, &fl); err != nil || len(fl.Entries) != 2 {
		t.Fatalf("list: %+v %v", fl, err)
	}
	_, err = c.Do(ctx, "GET", "/v1/boxes/web/files/stat?path=/srv/missing", nil, nil)
	wantCode(t, err, api.CodeNotFound, "stat of a missing file")
	_, err = c.Do(ctx, "GET", "/v1/boxes/web/files?path=/srv/d&format=raw", nil, nil)
	wantCode(t, err, api.CodeInvalidArgument, "raw download of a directory")
	_, err = c.Do(ctx, "GET", "/v1/boxes/web/files?path=relative", nil, nil)
	wantCode(t, err, api.CodeInvalidArgument, "a relative path")

	var stats map[string]any
	if _, err := do("GET", "/v1/boxes/{id}/stats", "/v1/boxes/web/stats", nil, &stats); err != nil || stats["box"] == nil {
		t.Fatalf("stats: %v %v", stats, err)
	}
	var metrics map[string]uint64
	if _, err := do("GET", "/v1/metrics", "/v1/metrics", nil, &metrics); err != nil || metrics["commands_executed"] < 3 {
		t.Fatalf("metrics: %v %v", metrics, err)
	}

	// Snapshots, clones, checkpoints, forks of the running box.
	var snap map[string]any
	if _, err := do("POST", "/v1/boxes/{id}/snapshots", "/v1/boxes/web/snapshots", api.NameRequest{Name: "s1"}, &snap); err != nil || snap["name"] != "s1" {
		t.Fatalf("snapshot: %v %v", snap, err)
	}
	var snaps struct{ Snapshots []map[string]any }
	if _, err := do("GET", "/v1/boxes/{id}/snapshots", "/v1/boxes/web/snapshots", nil, &snaps); err != nil || len(snaps.Snapshots) != 1 {
		t.Fatalf("snapshots: %v %v", snaps, err)
	}
	var clones api.BoxList
	if _, err := do("POST", "/v1/boxes/{id}/clone", "/v1/boxes/web/clone", api.CloneRequest{Name: "webclone", Snapshot: "s1"}, &clones); err != nil || len(clones.Boxes) != 1 || clones.Boxes[0].Name != "webclone" {
		t.Fatalf("clone: %+v %v", clones, err)
	}
	var stopped api.Box
	if _, err := do("POST", "/v1/boxes/{id}/stop", "/v1/boxes/web/stop", map[string]int{"timeout_seconds": 5}, &stopped); err != nil || stopped.Status != model.StatusStopped {
		t.Fatalf("stop: %+v %v", stopped, err)
	}
	if _, err := do("POST", "/v1/boxes/{id}/snapshots/{name}/restore", "/v1/boxes/web/snapshots/s1/restore", nil, nil); err != nil {
		t.Fatalf("restore snapshot: %v", err)
	}
	_, err = do("DELETE", "/v1/boxes/{id}/snapshots/{name}", "/v1/boxes/web/snapshots/s1", nil, nil)
	wantCode(t, err, api.CodeInvalidState, "removing the snapshot a clone depends on")
	if err := c.RemoveBox(ctx, "webclone", true); err != nil {
		t.Fatal(err)
	}
	if _, err := do("DELETE", "/v1/boxes/{id}/snapshots/{name}", "/v1/boxes/web/snapshots/s1", nil, nil); err != nil {
		t.Fatalf("remove snapshot: %v", err)
	}
	// Memory checkpoints and forks (after the disk snapshots: restoring a
	// checkpoint gives the box a new disk, without the old one's snapshots).
	if _, err := c.Do(ctx, "POST", "/v1/boxes/web/start", nil, nil); err != nil {
		t.Fatal(err)
	}
	var cp map[string]any
	if _, err := do("POST", "/v1/boxes/{id}/checkpoints", "/v1/boxes/web/checkpoints", api.NameRequest{Name: "c1"}, &cp); err != nil || cp["name"] != "c1" {
		t.Fatalf("checkpoint: %v %v", cp, err)
	}
	var cps struct{ Checkpoints []map[string]any }
	if _, err := do("GET", "/v1/boxes/{id}/checkpoints", "/v1/boxes/web/checkpoints", nil, &cps); err != nil || len(cps.Checkpoints) != 1 {
		t.Fatalf("checkpoints: %v %v", cps, err)
	}
	var restored api.Box
	if _, err := do("POST", "/v1/boxes/{id}/checkpoints/{name}/restore", "/v1/boxes/web/checkpoints/c1/restore", api.RestoreRequest{Force: true}, &restored); err != nil || restored.Status != model.StatusRunning {
		t.Fatalf("restore checkpoint: %+v %v", restored, err)
	}
	var forks api.BoxList
	if _, err := do("POST", "/v1/boxes/{id}/fork", "/v1/boxes/web/fork", api.ForkRequest{Name: "webfork", Count: 1}, &forks); err != nil || len(forks.Boxes) != 1 || forks.Boxes[0].Status != model.StatusRunning || !forks.Boxes[0].Run.Detached {
		t.Fatalf("fork: %+v %v", forks, err)
	}
	if _, err := do("DELETE", "/v1/boxes/{id}/checkpoints/{name}", "/v1/boxes/web/checkpoints/c1", nil, nil); err != nil {
		t.Fatalf("remove checkpoint: %v", err)
	}
	if _, err := c.Do(ctx, "POST", "/v1/boxes/web/stop", nil, nil); err != nil {
		t.Fatal(err)
	}

	// Export, then import under another name.
	seen["GET /v1/boxes/{id}/export"] = true
	seen["POST /v1/boxes/import"] = true
	resp, err = c.Raw(ctx, "GET", "/v1/boxes/web/export", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	archive, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var imported api.Box
	if _, err := c.Do(ctx, "POST", "/v1/boxes/import?name=webcopy", bytes.NewReader(archive), &imported); err != nil || imported.Name != "webcopy" {
		t.Fatalf("import: %+v %v", imported, err)
	}

	// Removal.
	seen["DELETE /v1/boxes/{id}"] = true
	_, err = c.Do(ctx, "DELETE", "/v1/boxes/webfork", nil, nil)
	wantCode(t, err, api.CodeInvalidState, "removing a running box without force")
	for _, b := range []string{"webfork", "webcopy", "web", "other"} {
		if err := c.RemoveBox(ctx, b, true); err != nil {
			t.Fatalf("remove %s: %v", b, err)
		}
	}
	_, err = c.Box(ctx, "web")
	wantCode(t, err, api.CodeNotFound, "get after remove")
	var removed api.RemovedImages
	if _, err := do("DELETE", "/v1/images", "/v1/images?ref="+url.QueryEscape(testImage), nil, &removed); err != nil || len(removed.Images) != 1 {
		t.Fatalf("remove image: %+v %v", removed, err)
	}

	for _, r := range api.NewServer(nil).Routes() {
		if !seen[r.Method+" "+r.Path] {
			t.Errorf("route %s %s was not exercised", r.Method, r.Path)
		}
	}
	srv.stop(t)
	if _, err := os.Stat(strings.TrimPrefix(srv.where, "unix:")); !os.IsNotExist(err) {
		t.Errorf("the socket is still there after the server stopped: %v", err)
	}
}

// TestAPIOverTCPNeedsTheToken runs the server on loopback TCP: every
// route but the public two refuses a missing or wrong token, the right one
// is accepted, and the token file is made with mode 0600 and reused.
func TestAPIOverTCPNeedsTheToken(t *testing.T) {
	e := newEnv(t, "")
	tokenFile := filepath.Join(t.TempDir(), "token")
	srv := e.serve("--listen", "127.0.0.1:0", "--token-file", tokenFile)
	st, err := os.Stat(tokenFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", st, err)
	}
	tokenBytes, _ := os.ReadFile(tokenFile)
	token := strings.TrimSpace(string(tokenBytes))
	base := "http://" + strings.Fields(strings.TrimPrefix(srv.where, "http://"))[0]
	ctx := context.Background()
	for _, r := range api.NewServer(nil).Routes() {
		path := strings.NewReplacer("{id}", "nobox", "{name}", "n").Replace(r.Path)
		for _, tok := range []string{"", "wrong-token-wrong-token"} {
			_, err := apiclient.TCP(base, tok).Do(ctx, r.Method, path, nil, nil)
			if r.Public {
				if err != nil {
					t.Errorf("public %s %s with token %q: %v", r.Method, path, tok, err)
				}
				continue
			}
			if e, ok := err.(*apiclient.Error); !ok || e.Status != http.StatusUnauthorized || e.Code != api.CodeUnauthorized {
				t.Errorf("%s %s with token %q: %v, want 401 unauthorized", r.Method, path, tok, err)
			}
		}
	}
	good := apiclient.TCP(base, token)
	defer good.Close()
	if _, err := good.Boxes(ctx); err != nil {
		t.Fatalf("list with the token: %v", err)
	}
	_, err = good.Box(ctx, "nobox")
	wantCode(t, err, api.CodeNotFound, "get nobox with the token")
	srv.stop(t)

	// A second server reads the same token file.
	srv = e.serve("--listen", "127.0.0.1:0", "--token-file", tokenFile)
	base = "http://" + strings.Fields(strings.TrimPrefix(srv.where, "http://"))[0]
	if _, err := apiclient.TCP(base, token).Boxes(ctx); err != nil {
		t.Fatalf("the restarted server does not take the token of its file: %v", err)
	}
	srv.stop(t)
}

// TestAPIExecOwnershipAndShutdown: a streaming or one-shot exec whose
// client vanishes has its command killed; SIGTERM ends the server, kills the commands of
// the exec streams still open after --shutdown-timeout and leaves the
// (detached) box running.
func TestAPIExecOwnershipAndShutdown(t *testing.T) {
	e := newEnv(t, "")
	srv := e.serve("--shutdown-timeout", "1s")
	c := e.unixClient(srv)
	ctx := context.Background()
	if _, err := c.CreateBox(ctx, api.CreateBoxRequest{Image: testImage, Name: "own", Start: true}); err != nil {
		t.Fatal(err)
	}

	startSleeper := func() (*apiclient.Stream, int) {
		t.Helper()
		pr, pw := io.Pipe()
		st, err := c.ExecStream(ctx, "own", url.Values{"cmd": {"sh", "-c", "echo $$; exec sleep 300"}}, pw, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(pr).ReadString('\n')
		go func() { _, _ = io.Copy(io.Discard, pr) }()
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(line))
		if err != nil || !pidAlive(pid) {
			t.Fatalf("the command's PID %q: %v", line, err)
		}
		return st, pid
	}
	st, pid := startSleeper()
	st.Abandon()
	waitDead(t, pid, 10*time.Second)

	// A one-shot exec whose client goes away loses its command too. The
	// procvmm double runs commands as host processes: find it by its
	// unique argument.
	sleeping := func() bool { return exec.Command("pgrep", "-f", "sleep 301.5").Run() == nil }
	octx, ocancel := context.WithCancel(ctx)
	oneShotDone := make(chan error, 1)
	go func() {
		_, err := c.Exec(octx, "own", api.ExecRequest{Cmd: []string{"sleep", "301.5"}})
		oneShotDone <- err
	}()
	for deadline := time.Now().Add(10 * time.Second); !sleeping(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the one-shot command never started")
		}
	}
	ocancel()
	if err := <-oneShotDone; err == nil {
		t.Fatal("a cancelled one-shot exec reported success")
	}
	for deadline := time.Now().Add(10 * time.Second); sleeping(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the one-shot command still runs 10s after its client went away")
		}
	}

	st, pid = startSleeper()
	var quickOut bytes.Buffer
	quick, err := c.ExecStream(ctx, "own", url.Values{"cmd": {"sh", "-c", "sleep 0.3; echo finished"}}, &quickOut, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	srv.stop(t)
	waitDead(t, pid, 10*time.Second)
	if _, err := st.Wait(ctx); err == nil {
		t.Fatalf("the exec stream of a stopped server reported an exit code")
	}
	// A stream that ends within --shutdown-timeout ends normally.
	if code, err := quick.Wait(ctx); err != nil || code != 0 || quickOut.String() != "finished\n" {
		t.Fatalf("a stream that finished during the shutdown: exit %d %v, output %q", code, err, quickOut.String())
	}
	rt := e.runtime()
	if b := e.info(rt, "own"); b.Status != model.StatusRunning {
		t.Fatalf("after the server stopped the box is %s, want it still running", b.Status)
	}
	// The box is usable by the next client: a new server, or the CLI.
	if got := strings.TrimSpace(e.ok("exec", "own", "--", "echo", "still")); got != "still" {
		t.Fatalf("exec after the server stopped: %q", got)
	}
	e.ok("rm", "-f", "own")
}

// TestAPIConcurrentClients: 16 API clients at once, each creating,
// exec-ing in and removing its own boxes, then listing; the store is
// consistent afterwards and holds none of their boxes.
func TestAPIConcurrentClients(t *testing.T) {
	e := newEnv(t, "")
	srv := e.serve()
	sock := strings.TrimPrefix(srv.where, "unix:")
	ctx := context.Background()
	// Pull once, so that the clients race on boxes, not on the image cache.
	if _, err := apiclient.Unix(sock).Pull(ctx, testImage, nil); err != nil {
		t.Fatal(err)
	}
	const clients, rounds = 16, 2
	var wg sync.WaitGroup
	errs := make(chan error, clients*rounds)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c := apiclient.Unix(sock)
			defer c.Close()
			for r := 0; r < rounds; r++ {
				name := fmt.Sprintf("c%d-%d", i, r)
				if _, err := c.CreateBox(ctx, api.CreateBoxRequest{Image: testImage, Name: name}); err != nil {
					errs <- fmt.Errorf("create %s: %w", name, err)
					return
				}
				res, err := c.Exec(ctx, name, api.ExecRequest{Cmd: []string{"echo", name}})
				if err != nil || res.Stdout != name+"\n" {
					errs <- fmt.Errorf("exec in %s: %+v %v", name, res, err)
					return
				}
				if _, err := c.Boxes(ctx); err != nil {
					errs <- fmt.Errorf("list: %w", err)
					return
				}
				if err := c.RemoveBox(ctx, name, true); err != nil {
					errs <- fmt.Errorf("remove %s: %w", name, err)
					return
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	boxes, err := apiclient.Unix(sock).Boxes(ctx)
	if err != nil || len(boxes) != 0 {
		t.Fatalf("boxes left: %d %v", len(boxes), err)
	}
	srv.stop(t)
	rt := e.runtime()
	e.assertConsistent(rt)
}

// lockedBuffer is a bytes.Buffer written by a stream's reader and read by
// the test meanwhile.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestAPIOverTLS serves HTTPS on loopback with a self-signed certificate.
func TestAPIOverTLS(t *testing.T) {
	e := newEnv(t, "")
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:   time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile := testbinWrite(t, dir, "cert.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	keyFile := testbinWrite(t, dir, "key.pem", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	tokenFile := filepath.Join(dir, "token")
	srv := e.serve("--listen", "127.0.0.1:0", "--token-file", tokenFile, "--tls-cert", certFile, "--tls-key", keyFile)
	base := strings.Fields(srv.where)[0]
	if !strings.HasPrefix(base, "https://") {
		t.Fatalf("serve with TLS listens on %q", srv.where)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	token, _ := os.ReadFile(tokenFile)
	req, _ := http.NewRequest("GET", base+"/v1/boxes", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.TLS == nil {
		t.Fatalf("GET /v1/boxes over TLS: %d (TLS %v)", resp.StatusCode, resp.TLS != nil)
	}
	// Plain HTTP gets Go's "client sent an HTTP request to an HTTPS
	// server" 400 (or a broken connection), never the API.
	if plain, err := http.Get(strings.Replace(base, "https://", "http://", 1) + "/v1/health"); err == nil {
		plain.Body.Close()
		if plain.StatusCode != http.StatusBadRequest {
			t.Fatalf("plain HTTP on the TLS port: %d", plain.StatusCode)
		}
	}
	srv.stop(t)
}

func testbinWrite(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
