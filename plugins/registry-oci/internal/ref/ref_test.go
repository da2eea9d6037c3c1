package ref

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/errdefs"
)

func TestParse(t *testing.T) {
	wd, _ := os.Getwd()
	dg := "sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for in, want := range map[string]string{
		"alpine":                             "docker.io/library/alpine:latest",
		"alpine:3.20":                        "docker.io/library/alpine:3.20",
		"docker.io/alpine":                   "docker.io/library/alpine:latest",
		"index.docker.io/library/alpine:3":   "docker.io/library/alpine:3",
		"docker://busybox":                   "docker.io/library/busybox:latest",
		"user/app":                           "docker.io/user/app:latest",
		"ghcr.io/org/app:v1":                 "ghcr.io/org/app:v1",
		"localhost:5000/app":                 "localhost:5000/app:latest",
		"alpine@" + dg:                       "docker.io/library/alpine@" + dg,
		"oci-layout:/tmp/l":                  "oci-layout:/tmp/l",
		"oci-layout:/tmp/l:v1":               "oci-layout:/tmp/l:v1",
		"oci-layout:/tmp/l:docker.io/x:1":    "oci-layout:/tmp/l:docker.io/x:1",
		"oci-layout:/tmp/l@" + dg:            "oci-layout:/tmp/l@" + dg,
		"oci-layout:rel":                     "oci-layout:" + filepath.Join(wd, "rel"),
		"docker-archive:/x.tar":              "docker-archive:/x.tar",
		"docker-archive:/x.tar:app":          "docker-archive:/x.tar:docker.io/library/app:latest",
		"docker-archive:/x.tar:reg:5000/a:1": "docker-archive:/x.tar:reg:5000/a:1",
		"docker-archive:/x.tar:@2":           "docker-archive:/x.tar:@2",
	} {
		r, err := Parse(in)
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if got := r.String(); got != want {
			t.Errorf("%q -> %q, want %q", in, got, want)
		}
	}
	for _, bad := range []string{"", "Upper/Case", "oci-layout:", "oci-layout:/x:", "oci-layout:/x@sha256:zz", "docker-archive:", "docker-archive:/x:", "docker-archive:/x:@-1", "docker-archive:/x:@a", "a b"} {
		if _, err := Parse(bad); !errors.Is(err, errdefs.ErrBadReference) {
			t.Errorf("%q: %v, want ErrBadReference", bad, err)
		}
	}
	if r, _ := Parse("alpine@" + dg); !r.IsDigest() {
		t.Error("digest reference not recognized")
	}
	if r, _ := Parse("alpine"); r.IsDigest() {
		t.Error("tag reference taken for a digest")
	}
}
