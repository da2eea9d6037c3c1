package core

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/internal/lockfile"
	"github.com/boxctl/boxctl/sdk"
)

func TestCommitAndPushNeedThePluginsCapabilities(t *testing.T) {
	rt, _ := openWithDoubles(t)
	if _, err := rt.Create(bg, BoxOptions{Name: "web", Config: model.BoxConfig{Image: "alpine"}}); err != nil {
		t.Fatal(err)
	}
	_, err := rt.Commit(bg, "web", "app:v1", CommitOptions{})
	errIs(t, "commit with an image plugin that cannot commit", err, ErrUnsupported)
	_, err = rt.Push(bg, "app:v1", nil)
	errIs(t, "push with an image plugin that cannot push", err, ErrUnsupported)
	_, err = rt.Commit(bg, "web", "", CommitOptions{})
	errIs(t, "commit without an image name", err, ErrInvalidArgument)
}

func TestCommitRefusesBoxesItCannotBoot(t *testing.T) {
	rt, p := openWithDoubles(t)
	p.images.canCommit = true
	if _, err := rt.Create(bg, BoxOptions{Name: "once", Config: model.BoxConfig{Image: "alpine", AutoRemove: true}}); err != nil {
		t.Fatal(err)
	}
	_, err := rt.Commit(bg, "once", "app:v1", CommitOptions{})
	errIs(t, "commit of a stopped auto-remove box", err, ErrInvalidState)
	if b, err := rt.GetInfo(bg, "once"); err != nil || b.Status != model.StatusConfigured {
		t.Fatalf("the refused box: %+v, %v; want it left as it was", b, err)
	}
	_, err = rt.Commit(bg, "nosuchbox", "app:v1", CommitOptions{})
	errIs(t, "commit of a missing box", err, ErrNotFound)
}

func TestCommitConfigKeepsTheBoxSettings(t *testing.T) {
	b := &model.Box{Config: model.BoxConfig{
		Cmd: []string{"serve"}, Env: []string{"A=box", "B=2"}, User: "guest",
		Labels: map[string]string{"team": "x"},
	}}
	img := sdk.ImageConfig{Env: []string{"PATH=/bin", "A=image"}, Labels: map[string]string{"vendor": "y"}}
	c := commitConfig(b, img, nil)
	if c == nil || !slices.Equal(c.Cmd, []string{"serve"}) || !slices.Equal(c.Env, []string{"PATH=/bin", "A=box", "B=2"}) ||
		c.User != "guest" || c.Entrypoint != nil || c.Labels["team"] != "x" || c.Labels["vendor"] != "y" {
		t.Errorf("config from the box: %+v", c)
	}
	if img.Labels["team"] != "" {
		t.Error("commitConfig changed the image's labels")
	}
	c = commitConfig(b, img, &sdk.ImageConfig{Cmd: []string{"other"}, WorkingDir: "/srv"})
	if !slices.Equal(c.Cmd, []string{"other"}) || c.WorkingDir != "/srv" || c.User != "guest" {
		t.Errorf("with overrides: %+v", c)
	}
	if c := commitConfig(&model.Box{}, img, nil); c != nil {
		t.Errorf("a box without settings changes the config: %+v", c)
	}
}

func TestDiffLimit(t *testing.T) {
	if got := diffLimit(&model.Box{Config: model.BoxConfig{DiskSize: 1 << 30}}, 10<<30); got != 3<<30 {
		t.Errorf("limit of a 1 GiB disk = %d", got)
	}
	if got := diffLimit(&model.Box{}, 10<<30); got != 21<<30 {
		t.Errorf("limit with the default 10 GiB disk = %d", got)
	}
	w := &limitWriter{w: io.Discard, left: 10}
	if n, err := w.Write(make([]byte, 10)); n != 10 || err != nil {
		t.Errorf("write within the limit: %d %v", n, err)
	}
	if _, err := w.Write([]byte{1}); err != errDiffTooLarge {
		t.Errorf("write past the limit: %v", err)
	}
}

// The files of dead commits go; a live commit's (locked) and a just-made
// one's stay.
func TestSweepCommitFiles(t *testing.T) {
	dir := t.TempDir()
	old := time.Now().Add(-time.Hour)
	mk := func(name string, mtime time.Time) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
		return p
	}
	dead, young, live, other := mk("commit-1.tar", old), mk("commit-2.tar", time.Now()), mk("commit-3.tar", old), mk("keep.tar", old)
	l, ok, err := lockfile.TryAcquire(live, false)
	if err != nil || !ok {
		t.Fatal(err)
	}
	defer l.Release()
	sweepCommitFiles(dir)
	for p, want := range map[string]bool{dead: false, young: true, live: true, other: true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("%s: exists %v, want %v", filepath.Base(p), err == nil, want)
		}
	}
}
