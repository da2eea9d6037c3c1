package initramfs

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Options describe an initramfs.
type Options struct {
	// Agent is the path of the static boxctl-agent binary; it becomes /init.
	Agent string
	// ModulesDir is the kernel's /lib/modules/<release> tree; empty means no modules (a
	// kernel with everything built in).
	ModulesDir string
	// Release is the kernel release the modules go under; the base name of ModulesDir if
	// empty.
	Release string
	// Modules are the wanted module names; DefaultModules if nil.
	Modules []string
	// StripSignatures removes module signatures (see StripSignature).
	StripSignatures bool
	// Compression is "none" (the default: fastest to boot under emulation, where the
	// kernel's decompressor is slow), "gzip" or "zstd" (needs the zstd tool).
	Compression string
}

// Build writes the initramfs described by opts to w and reports which modules went in.
func Build(w io.Writer, opts Options) (*ModuleSelection, error) {
	agent, err := os.ReadFile(opts.Agent)
	if err != nil {
		return nil, fmt.Errorf("read agent binary: %w", err)
	}
	if !bytes.HasPrefix(agent, []byte("\x7fELF")) {
		return nil, fmt.Errorf("agent %s is not an ELF binary", opts.Agent)
	}
	a := NewArchive()
	a.Add(Entry{Path: "init", Mode: ModeRegular | 0o755, Data: agent})
	// The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
	a.Add(Entry{Path: "dev/console", Mode: ModeChar | 0o600, Major: 5, Minor: 1})
	for _, d := range []string{"proc", "sys", "run", "tmp", "dev/pts"} {
		a.Add(Entry{Path: d, Mode: ModeDir | 0o755})
	}

	sel := &ModuleSelection{}
	if opts.ModulesDir != "" {
		want := opts.Modules
		if want == nil {
			want = DefaultModules
		}
		release := opts.Release
		if release == "" {
			release = filepath.Base(filepath.Clean(opts.ModulesDir))
		}
		sel, err = ResolveModules(opts.ModulesDir, want)
		if err != nil {
			return nil, err
		}
		base := "lib/modules/" + release + "/"
		for _, m := range sel.Modules {
			data := m.Data
			if opts.StripSignatures {
				if data, err = StripSignature(data); err != nil {
					return nil, fmt.Errorf("module %s: %w", m.Name, err)
				}
			}
			a.Add(Entry{Path: base + m.Path, Mode: ModeRegular | 0o644, Data: data})
		}
		a.Add(Entry{Path: base + "modules.dep", Mode: ModeRegular | 0o644, Data: ModulesDep(sel)})
		if b, err := os.ReadFile(filepath.Join(opts.ModulesDir, "modules.builtin")); err == nil {
			a.Add(Entry{Path: base + "modules.builtin", Mode: ModeRegular | 0o644, Data: b})
		}
	}

	switch opts.Compression {
	case "", "none":
		_, err = a.WriteTo(w)
	case "gzip":
		zw, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
		if _, err = a.WriteTo(zw); err == nil {
			err = zw.Close()
		}
	case "zstd":
		err = compressWith(w, a, "zstd", "-q", "-c", "-3")
	default:
		return nil, fmt.Errorf("unknown initramfs compression %q (none, gzip, zstd)", opts.Compression)
	}
	if err != nil {
		return nil, fmt.Errorf("write initramfs: %w", err)
	}
	return sel, nil
}

func compressWith(w io.Writer, a *Archive, tool string, args ...string) error {
	if _, err := exec.LookPath(tool); err != nil {
		return fmt.Errorf("%s is not installed", tool)
	}
	var raw bytes.Buffer
	if _, err := a.WriteTo(&raw); err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd := exec.Command(tool, args...)
	cmd.Stdin = &raw
	cmd.Stdout = w
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %v: %s", tool, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
