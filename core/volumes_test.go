package core

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/boxctl/boxctl/core/model"
)

func TestParseMount(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	good := []struct {
		arg  string
		want model.Mount
	}{
		{"/srv/data:/data", model.Mount{Kind: model.MountBind, Source: "/srv/data", Target: "/data"}},
		{"/srv/data/../x:/data:ro", model.Mount{Kind: model.MountBind, Source: "/srv/x", Target: "/data", ReadOnly: true}},
		{"./src:/src:rw", model.Mount{Kind: model.MountBind, Source: filepath.Join(wd, "src"), Target: "/src"}},
		{"cache:/var/cache", model.Mount{Kind: model.MountVolume, Source: "cache", Target: "/var/cache"}},
		{"cache:rel", model.Mount{Kind: model.MountVolume, Source: "cache", Target: "rel"}}, // refused by checkMounts
	}
	for _, c := range good {
		got, err := ParseMount(c.arg)
		if err != nil || got != c.want {
			t.Errorf("ParseMount(%q) = %+v, %v; want %+v", c.arg, got, err, c.want)
		}
	}
	for _, arg := range []string{"", "/x", "/x:/y:ro:extra", "/x:/y:rx"} {
		if _, err := ParseMount(arg); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("ParseMount(%q): %v, want ErrInvalidArgument", arg, err)
		}
	}
}

func TestCheckMounts(t *testing.T) {
	dir := t.TempDir()
	ok := []model.Mount{{Kind: model.MountBind, Source: dir, Target: "/a"}, {Kind: model.MountVolume, Source: "v", Target: "/b", ReadOnly: true}}
	if err := checkMounts(ok); err != nil {
		t.Fatalf("checkMounts(%+v): %v", ok, err)
	}
	bad := [][]model.Mount{
		{{Kind: model.MountBind, Source: dir, Target: "a"}},
		{{Kind: model.MountBind, Source: dir, Target: "/.."}},
		{{Kind: model.MountBind, Source: dir, Target: "/a"}, {Kind: model.MountVolume, Source: "v", Target: "/a/."}},
		{{Kind: model.MountBind, Source: "rel", Target: "/a"}},
		{{Kind: model.MountBind, Source: filepath.Join(dir, "nope"), Target: "/a"}},
		{{Kind: model.MountVolume, Source: "-v", Target: "/a"}},
		{{Kind: "nfs", Source: "x", Target: "/a"}},
	}
	for _, ms := range bad {
		if err := checkMounts(ms); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("checkMounts(%+v): %v, want ErrInvalidArgument", ms, err)
		}
	}
}
