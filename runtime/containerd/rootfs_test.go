package containerd

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteLayout(t *testing.T) {
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "bin"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "etc"), 0o755))
	must(os.WriteFile(filepath.Join(root, "bin", "busybox"), []byte("#!bb"), 0o755))
	must(os.Link(filepath.Join(root, "bin", "busybox"), filepath.Join(root, "bin", "sh")))
	must(os.Symlink("busybox", filepath.Join(root, "bin", "ls")))
	must(os.WriteFile(filepath.Join(root, "etc", "hosts"), []byte("image's hosts\n"), 0o644))
	host := t.TempDir()
	hosts := filepath.Join(host, "hosts")
	must(os.WriteFile(hosts, []byte("127.0.0.1 pod\n"), 0o644))
	termlog := filepath.Join(host, "0c1d2e")
	must(os.WriteFile(termlog, nil, 0o666))
	files := map[string]string{"/etc/hosts": hosts, "/dev/termination-log": termlog}

	out := filepath.Join(t.TempDir(), "layout")
	digest, err := writeLayout(root, out, files)
	must(err)
	again, err := writeLayout(root, filepath.Join(t.TempDir(), "layout"), files)
	must(err)
	if digest != again {
		t.Fatalf("one tree gave two digests: %s, %s", digest, again)
	}

	var manifest struct {
		Layers []descriptor `json:"layers"`
	}
	data, err := os.ReadFile(filepath.Join(out, "blobs", "sha256", strings.TrimPrefix(digest, "sha256:")))
	must(err)
	must(json.Unmarshal(data, &manifest))
	if len(manifest.Layers) != 1 || manifest.Layers[0].MediaType != mediaLayer {
		t.Fatalf("manifest layers %+v", manifest.Layers)
	}
	f, err := os.Open(filepath.Join(out, "blobs", "sha256", strings.TrimPrefix(manifest.Layers[0].Digest, "sha256:")))
	must(err)
	defer f.Close()
	got := map[string]string{}
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		must(err)
		body, _ := io.ReadAll(tr)
		switch hdr.Typeflag {
		case tar.TypeLink:
			got[hdr.Name] = "link:" + hdr.Linkname
		case tar.TypeSymlink:
			got[hdr.Name] = "symlink:" + hdr.Linkname
		case tar.TypeDir:
			got[hdr.Name] = "dir"
		default:
			got[hdr.Name] = string(body)
		}
	}
	want := map[string]string{
		"bin/": "dir", "etc/": "dir", "dev/": "dir",
		"bin/busybox": "#!bb", "bin/sh": "link:bin/busybox", "bin/ls": "symlink:busybox",
		"etc/hosts": "127.0.0.1 pod\n", "dev/termination-log": "",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("layer entry %s = %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("layer has %d entries, want %d: %v", len(got), len(want), got)
	}
}
