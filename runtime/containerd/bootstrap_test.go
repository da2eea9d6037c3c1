package containerd

import (
	"os"
	"path/filepath"
	"testing"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	runcopts "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func TestStartAnswerPerContainerdGeneration(t *testing.T) {
	f := startFlags{namespace: "k8s.io", id: "c1", address: "/run/containerd/containerd.sock"}
	const addr = "unix:///run/containerd/s/abc"

	// containerd 2.3+: BootstrapParams in, a v3 BootstrapResult out.
	in, err := proto.Marshal(&bootapi.BootstrapParams{
		InstanceID: "c1", Namespace: "k8s.io", ContainerdGrpcAddress: "/g.sock",
		ContainerdTtrpcAddress: "/t.sock", SocketDir: proto.String("/run/x/s"), LogLevel: bootapi.LogLevel_LOG_LEVEL_DEBUG,
	})
	if err != nil {
		t.Fatal(err)
	}
	req := parseStart(f, in, "/env.ttrpc")
	if !req.bootstrap || req.grpcAddr != "/g.sock" || req.ttrpcAddr != "/t.sock" || req.socketRoot != "/run/x/s" || !req.debug {
		t.Fatalf("bootstrap params parsed as %+v", req)
	}
	out, err := req.answer(addr)
	if err != nil {
		t.Fatal(err)
	}
	var res bootapi.BootstrapResult
	if err := proto.Unmarshal(out, &res); err != nil || res.Version != 3 || res.Address != addr || res.Protocol != "ttrpc" {
		t.Fatalf("bootstrap answer %v (%v): want version 3 at %s over ttrpc", &res, err, addr)
	}

	// containerd 1.6/1.7/2.0-2.2: runtime options or nothing in, the bare
	// address out (they read it as a task v2 shim; 1.6 reads nothing else).
	opts, err := proto.Marshal(&runcopts.Options{BinaryName: "x", Root: "/r"})
	if err != nil {
		t.Fatal(err)
	}
	for name, input := range map[string][]byte{"no stdin": nil, "runtime options": opts} {
		req := parseStart(f, input, "/env.ttrpc")
		if req.bootstrap || req.grpcAddr != f.address || req.ttrpcAddr != "/env.ttrpc" {
			t.Fatalf("%s parsed as %+v", name, req)
		}
		out, err := req.answer(addr)
		if err != nil || string(out) != addr {
			t.Fatalf("%s: answer %q (%v), want the bare address", name, out, err)
		}
	}

	// BootstrapParams for another container are not this start's.
	other, _ := proto.Marshal(&bootapi.BootstrapParams{InstanceID: "c2", Namespace: "k8s.io"})
	if parseStart(f, other, "").bootstrap {
		t.Fatal("bootstrap params of another instance accepted")
	}
}

func TestBoxName(t *testing.T) {
	for in, want := range map[[2]string]string{
		{"default", "web"}:             "default.web",
		{"k8s.io", "abc123"}:           "k8s.io.abc123",
		{"ns", "with/slash and space"}: "ns.with-slash-and-space",
	} {
		if got := boxName(in[0], in[1]); got != want {
			t.Errorf("boxName(%q, %q) = %q, want %q", in[0], in[1], got, want)
		}
	}
}

func TestConfigFromRuntimeOptions(t *testing.T) {
	bundle := t.TempDir()
	pack := func(m proto.Message, url string) *anypb.Any {
		v, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return &anypb.Any{TypeUrl: url, Value: v}
	}
	if p, err := configFromOptions(nil, bundle); p != "" || err != nil {
		t.Fatalf("no options: %q, %v", p, err)
	}
	p, err := configFromOptions(pack(&runtimeoptions.Options{ConfigPath: "/etc/boxctl/k8s.hcl"}, "runtimeoptions.v1.Options"), bundle)
	if p != "/etc/boxctl/k8s.hcl" || err != nil {
		t.Fatalf("ConfigPath: %q, %v", p, err)
	}
	p, err = configFromOptions(pack(&runtimeoptions.Options{ConfigBody: []byte(`home = "/x"`)}, "type.googleapis.com/runtimeoptions.v1.Options"), bundle)
	if err != nil || p != filepath.Join(bundle, "boxctl-config.hcl") {
		t.Fatalf("ConfigBody: %q, %v", p, err)
	}
	if data, _ := os.ReadFile(p); string(data) != `home = "/x"` {
		t.Fatalf("ConfigBody written as %q", data)
	}
	if _, err := configFromOptions(pack(&runcopts.Options{BinaryName: "runc"}, "containerd.runc.v1.Options"), bundle); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("runc options: %v, want invalid argument", err)
	}
}
