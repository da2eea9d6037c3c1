// Package busybox builds a tiny OCI test image from Debian's busybox-static binary: one
// layer with /bin/busybox and a symlink per applet, /etc/passwd and /etc/group with root and
// an unprivileged user "guest" (uid/gid 1000), /tmp, /root and /home/guest. Tests use it
// instead of pulling images (there is no registry to pull from here).
//
// The output is deterministic for a given busybox binary: same bytes, same digests.
package busybox

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// DefaultBusybox is where Debian's busybox-static installs the binary.
const DefaultBusybox = "/bin/busybox"

// DefaultTag is the image's reference name in the layout.
const DefaultTag = "busybox:latest"

// Path is the PATH in the image config.
const Path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Users of the image.
const (
	GuestUser = "guest"
	GuestUID  = 1000
	GuestGID  = 1000
	// ExtraGroup is a supplementary group "guest" belongs to.
	ExtraGroup    = "staff"
	ExtraGroupGID = 50
)

// epoch is the mtime of every file: fixed so the image digest is stable.
var epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// ErrNotStatic means the busybox binary is dynamically linked and would not run in the image.
var ErrNotStatic = errors.New("busybox binary is not statically linked (install busybox-static)")

// Options configure the image.
type Options struct {
	// Busybox is the static busybox binary to use; DefaultBusybox if empty.
	Busybox string
	// Tag is the reference name recorded in the layout (org.opencontainers.image.ref.name);
	// DefaultTag if empty.
	Tag string
	// Config, if set, changes the image config; nil gives the default image byte for byte.
	Config *Config
}

// Config is what an image's config says about running it. Zero fields keep the default
// image's values (Cmd /bin/sh, Env PATH=Path, no entrypoint, user or working directory).
type Config struct {
	Entrypoint []string
	Cmd        []string
	User       string
	// WorkingDir is added to the layer (with its parents, root-owned, mode 0755) if the
	// image does not have it.
	WorkingDir string
	// Env is added after PATH.
	Env []string
}

func (o Options) busybox() string {
	if o.Busybox == "" {
		return DefaultBusybox
	}
	return o.Busybox
}

// file is one entry of the image's filesystem.
type file struct {
	name     string // relative, no leading slash
	mode     int64  // permission bits
	typ      byte   // tar type
	body     []byte
	link     string
	uid, gid int
}

func files(opts Options) ([]file, error) {
	bin, err := os.ReadFile(opts.busybox())
	if err != nil {
		return nil, fmt.Errorf("read busybox: %w (install busybox-static)", err)
	}
	if err := checkStatic(bin); err != nil {
		return nil, fmt.Errorf("%s: %w", opts.busybox(), err)
	}
	out, err := exec.Command(opts.busybox(), "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("list busybox applets: %w", err)
	}
	applets := strings.Fields(string(out))
	sort.Strings(applets)

	fs := []file{
		{name: "bin", mode: 0o755, typ: tar.TypeDir},
		{name: "bin/busybox", mode: 0o755, typ: tar.TypeReg, body: bin},
		{name: "dev", mode: 0o755, typ: tar.TypeDir},
		{name: "etc", mode: 0o755, typ: tar.TypeDir},
		{name: "etc/group", mode: 0o644, typ: tar.TypeReg, body: []byte(fmt.Sprintf(
			"root:x:0:\n%s:x:%d:%s\n%s:x:%d:\nnogroup:x:65534:\n", ExtraGroup, ExtraGroupGID, GuestUser, GuestUser, GuestGID))},
		{name: "etc/passwd", mode: 0o644, typ: tar.TypeReg, body: []byte(fmt.Sprintf(
			"root:x:0:0:root:/root:/bin/sh\n%s:x:%d:%d:guest:/home/%s:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
			GuestUser, GuestUID, GuestGID, GuestUser))},
		{name: "home", mode: 0o755, typ: tar.TypeDir},
		{name: "home/" + GuestUser, mode: 0o755, typ: tar.TypeDir, uid: GuestUID, gid: GuestGID},
		{name: "proc", mode: 0o555, typ: tar.TypeDir},
		{name: "root", mode: 0o700, typ: tar.TypeDir},
		{name: "sys", mode: 0o555, typ: tar.TypeDir},
		{name: "tmp", mode: 0o1777, typ: tar.TypeDir},
		{name: "usr", mode: 0o755, typ: tar.TypeDir},
		{name: "usr/bin", mode: 0o755, typ: tar.TypeDir},
		{name: "var", mode: 0o755, typ: tar.TypeDir},
	}
	for _, a := range applets {
		if a == "busybox" || strings.Contains(a, "/") {
			continue
		}
		fs = append(fs, file{name: "bin/" + a, mode: 0o777, typ: tar.TypeSymlink, link: "busybox"})
	}
	if c := opts.Config; c != nil && c.WorkingDir != "" {
		have := map[string]bool{}
		for _, f := range fs {
			have[f.name] = true
		}
		var dir string
		for _, part := range strings.Split(strings.Trim(path.Clean("/"+c.WorkingDir), "/"), "/") {
			dir = path.Join(dir, part)
			if dir != "" && !have[dir] {
				fs = append(fs, file{name: dir, mode: 0o755, typ: tar.TypeDir})
				have[dir] = true
			}
		}
	}
	sort.Slice(fs, func(i, j int) bool { return fs[i].name < fs[j].name })
	return fs, nil
}

// LayerTar returns the image's single layer as an uncompressed tar.
func LayerTar(opts Options) ([]byte, error) {
	fs, err := files(opts)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range fs {
		hdr := &tar.Header{
			Name: f.name, Mode: f.mode, Typeflag: f.typ, Linkname: f.link,
			Uid: f.uid, Gid: f.gid, ModTime: epoch, Size: int64(len(f.body)),
			Format: tar.FormatPAX,
		}
		if f.typ == tar.TypeDir {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Image returns the busybox image.
func Image(opts Options) (v1.Image, error) {
	layerTar, err := LayerTar(opts)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("busybox layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture = runtime.GOARCH
	cf.OS = "linux"
	cf.Created = v1.Time{Time: epoch}
	cf.Config.Cmd = []string{"/bin/sh"}
	cf.Config.Env = []string{"PATH=" + Path}
	if c := opts.Config; c != nil {
		cf.Config.Entrypoint = c.Entrypoint
		if c.Cmd != nil {
			cf.Config.Cmd = c.Cmd
		}
		cf.Config.User = c.User
		cf.Config.WorkingDir = c.WorkingDir
		cf.Config.Env = append(cf.Config.Env, c.Env...)
	}
	return mutate.ConfigFile(img, cf)
}

// BuildLayout writes the image as an OCI image layout in dir (created if missing; an
// existing layout's index is replaced) and returns the image manifest digest.
func BuildLayout(dir string, opts Options) (v1.Hash, error) {
	img, err := Image(opts)
	if err != nil {
		return v1.Hash{}, err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("create OCI layout %s: %w", dir, err)
	}
	tag := opts.Tag
	if tag == "" {
		tag = DefaultTag
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": tag,
	})); err != nil {
		return v1.Hash{}, fmt.Errorf("write image to %s: %w", dir, err)
	}
	return img.Digest()
}

// WriteRootfs writes the image's filesystem into dir (which must be empty or missing), as a
// container runtime would unpack it. Ownership is applied when running as root.
func WriteRootfs(dir string, opts Options) error {
	fs, err := files(opts)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	root := os.Geteuid() == 0
	for _, f := range fs {
		p := filepath.Join(dir, f.name)
		switch f.typ {
		case tar.TypeDir:
			if err := os.Mkdir(p, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.WriteFile(p, f.body, 0o600); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.Symlink(f.link, p); err != nil {
				return err
			}
			continue
		}
		if err := os.Chmod(p, fileMode(f.mode)); err != nil {
			return err
		}
		if root {
			if err := os.Lchown(p, f.uid, f.gid); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkStatic refuses a dynamically linked binary (one with an ELF interpreter).
func checkStatic(bin []byte) error {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return fmt.Errorf("not an ELF binary: %w", err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return ErrNotStatic
		}
	}
	return nil
}

func fileMode(m int64) os.FileMode {
	fm := os.FileMode(m & 0o777)
	if m&0o1000 != 0 {
		fm |= os.ModeSticky
	}
	return fm
}
