package imagestore_test

import (
	"bytes"
	"encoding/json"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/imagestore"
	ti "github.com/boxctl/boxctl/plugins/registry-oci/internal/testimages"
)

// puller starts this test binary as a separate puller process.
func puller(t *testing.T, dir, ref string, rootDisk bool) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), pullerEnv+"=1", "PULLER_DIR="+dir, "PULLER_REF="+ref)
	if rootDisk {
		cmd.Env = append(cmd.Env, "PULLER_ROOTDISK=1")
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, &out
}

// noisyLayer makes a layer of incompressible data, so downloads take a
// measurable time.
func noisyLayer(seed int64, size int) *ti.Layer {
	b := make([]byte, size)
	rand.New(rand.NewSource(seed)).Read(b)
	return ti.NewLayer([]ti.Entry{ti.File("noise", string(b)), ti.File("seed", string(rune('a'+seed)))}, ti.Gzip)
}

func TestConcurrentProcessesPullOnce(t *testing.T) {
	r := newRegistry(t)
	layers := []*ti.Layer{noisyLayer(1, 3<<20), noisyLayer(2, 2<<20), noisyLayer(3, 1<<20)}
	img := mustImage(t, layers, v1.Config{}, "linux/amd64")
	ref := reg(t, r, "conc/app:1", img)
	cfgDigest, _ := img.ConfigName()
	r.SetBlobDelay(300 * time.Millisecond) // keep every puller in flight together
	dir := filepath.Join(t.TempDir(), "cache")

	const n = 4
	type proc struct {
		cmd *exec.Cmd
		out *bytes.Buffer
	}
	var ps []proc
	for i := 0; i < n; i++ {
		cmd, out := puller(t, dir, ref, true)
		ps = append(ps, proc{cmd, out})
	}
	built := 0
	var digest, path string
	for i, p := range ps {
		err := p.cmd.Wait()
		var res pullerResult
		if jerr := json.Unmarshal(p.out.Bytes(), &res); jerr != nil {
			t.Fatalf("puller %d: %v, output %q", i, err, p.out)
		}
		if err != nil || res.Err != "" {
			t.Fatalf("puller %d failed: %v %s", i, err, res.Err)
		}
		if digest == "" {
			digest, path = res.Digest, res.Path
		}
		if res.Digest != digest || res.Path != path {
			t.Errorf("puller %d got %s at %s, others %s at %s", i, res.Digest, res.Path, digest, path)
		}
		if res.Built {
			built++
		}
	}
	for i, l := range layers {
		if got := r.BlobGets(l.MustDigest()); got != 1 {
			t.Errorf("layer %d fetched %d times by %d processes, want once", i, got, n)
		}
	}
	if got := r.BlobGets(cfgDigest); got != 1 {
		t.Errorf("config fetched %d times by %d processes, want once", got, n)
	}
	if built != 1 {
		t.Errorf("%d processes built the root disk, want exactly 1", built)
	}
	s, err := imagestore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	x := ti.OpenExt4(t, path)
	x.Fsck()
	if got := x.Cat("/seed"); got != "d" { // the top layer, seed 3
		t.Errorf("/seed = %q", got)
	}
	if imgs, err := s.List(); err != nil || len(imgs) != 1 {
		t.Errorf("List: %v %v", imgs, err)
	}
	for _, sub := range []string{"tmp", "locks"} {
		if left := files(t, filepath.Join(dir, sub)); len(left) != 0 {
			t.Errorf("%s/ holds %v after successful pulls", sub, left)
		}
	}
}

func TestKilledPullLeavesNothingVisibleAndResumes(t *testing.T) {
	r := newRegistry(t)
	small := ti.NewLayer([]ti.Entry{ti.File("small", "s")}, ti.Gzip)
	big := noisyLayer(7, 4<<20)
	img := mustImage(t, []*ti.Layer{small, big}, v1.Config{}, "linux/amd64")
	ref := reg(t, r, "kill/app:1", img)
	const stallAt = 1 << 20
	release := r.StallBlob(big.MustDigest(), stallAt)
	dir := filepath.Join(t.TempDir(), "cache")

	cmd, _ := puller(t, dir, ref, false)
	partial := filepath.Join(dir, "tmp", "blob-"+big.MustDigest().Hex+".partial")
	deadline := time.Now().Add(time.Minute)
	for {
		if fi, err := os.Stat(partial); err == nil && fi.Size() >= stallAt {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("the puller never got the first megabyte")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	werr := cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("puller was not killed: %v", werr)
	}

	s, err := imagestore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	// Nothing half-visible: no record, no reference, no big blob; only the
	// partial download in tmp/.
	assertNothingCached(t, s)
	if _, err := os.Stat(filepath.Join(dir, "blobs", "sha256", big.MustDigest().Hex)); !os.IsNotExist(err) {
		t.Errorf("big blob is visible after the kill: %v", err)
	}
	if _, err := s.RootDisk(ctx(t), digestOf(t, img)); !errorsIs(err, imagestore.ErrNotFound) {
		t.Errorf("root disk after kill: %v, want ErrNotFound", err)
	}

	release()
	got, err := s.Pull(ctx(t), ref, imagestore.PullOptions{})
	if err != nil {
		t.Fatalf("pull after kill: %v", err)
	}
	if got.Digest != digestOf(t, img) {
		t.Errorf("digest %s", got.Digest)
	}
	ranges := r.RangeRequests(big.MustDigest())
	if len(ranges) != 2 || ranges[0] != "" || !strings.HasPrefix(ranges[1], "bytes=1048576-") {
		t.Errorf("blob requests' Range headers %q: want a fresh GET, then a resume from byte 1048576", ranges)
	}
	rd, err := s.RootDisk(ctx(t), got.Digest)
	if err != nil {
		t.Fatal(err)
	}
	x := ti.OpenExt4(t, rd.Path)
	x.Fsck()
	if s := x.MustStat("/noise"); s.Size != 4<<20 {
		t.Errorf("/noise is %d bytes", s.Size)
	}
	if _, err := os.Stat(partial); !os.IsNotExist(err) {
		t.Errorf("partial download still there: %v", err)
	}
}
