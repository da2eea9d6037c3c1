package plugin_test

import (
	"context"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/plugin"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/sdktest"
)

// testDomainTransport sends connections for any *.test host to target (a
// loopback registry): a name the store does not treat as local, so it is
// reached over HTTPS unless configured as insecure.
func testDomainTransport(target string) http.RoundTripper {
	d := &net.Dialer{Timeout: 10 * time.Second}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if host, _, err := net.SplitHostPort(addr); err == nil && strings.HasSuffix(host, ".test") {
			addr = target
		}
		return d.DialContext(ctx, network, addr)
	}
	return tr
}

func TestInsecureHost(t *testing.T) {
	r := newRegistry(t)
	push(t, r, "ins/app:1", simpleImage(t, "insecure"))
	_, port, err := net.SplitHostPort(r.Host)
	if err != nil {
		t.Fatal(err)
	}
	host := "registry.test:" + port
	ref := host + "/ins/app:1"
	tr := plugin.WithTransport(testDomainTransport(r.Host))

	secure, _ := serve(t, setup{opts: []plugin.Option{tr}})
	_, err = secure.Pull(testCtx(t), sdk.PullRequest{Reference: ref}, nil)
	wantRemote(t, "plain-HTTP registry not listed as insecure", err, sdk.ErrUnavailable, host, "insecure registry")

	insecure, _ := serve(t, setup{opts: []plugin.Option{tr}, registry: &sdk.RegistrySettings{Insecure: []string{host}}})
	if got := pull(t, insecure, ref); !slices.Equal(got.References, []string{ref}) {
		t.Errorf("insecure pull: %v", got)
	}
	// Written the way users paste it, with a scheme.
	schemed, _ := serve(t, setup{opts: []plugin.Option{tr}, registry: &sdk.RegistrySettings{Insecure: []string{"http://" + host + "/"}}})
	pull(t, schemed, ref)
}

func TestExplicitAndDockerCredentials(t *testing.T) {
	r := newRegistry(t)
	ref := push(t, r, "private/app:1", simpleImage(t, "secret"))
	r.RequireBasicAuth("alice", "s3cret")
	cred := func(user, pass string) *sdk.RegistrySettings {
		return &sdk.RegistrySettings{Credentials: []sdk.RegistryCredential{{Registry: r.Host, Username: user, Password: pass}}}
	}

	anon, _ := serve(t, setup{})
	_, err := anon.Pull(testCtx(t), sdk.PullRequest{Reference: ref}, nil)
	wantRemote(t, "no credentials", err, sdk.ErrUnauthenticated, "401", "docker login "+r.Host, "credentials for "+r.Host)

	wrong, _ := serve(t, setup{registry: cred("alice", "wrong")})
	_, err = wrong.Pull(testCtx(t), sdk.PullRequest{Reference: ref}, nil)
	wantRemote(t, "wrong password", err, sdk.ErrUnauthenticated, "401")

	right, _ := serve(t, setup{registry: cred("alice", "s3cret")})
	pull(t, right, ref)

	// Docker's config.json is used only with use_docker_credentials.
	withDocker, _ := serve(t, setup{registry: &sdk.RegistrySettings{UseDockerCredentials: true}})
	withoutDocker, _ := serve(t, setup{registry: &sdk.RegistrySettings{UseDockerCredentials: false}})
	cfgDir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	if err := os.WriteFile(filepath.Join(cfgDir, "config.json"), []byte(`{"auths":{"`+r.Host+`":{"auth":"`+auth+`"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", cfgDir)
	pull(t, withDocker, ref)
	_, err = withoutDocker.Pull(testCtx(t), sdk.PullRequest{Reference: ref}, nil)
	wantRemote(t, "docker credentials disabled", err, sdk.ErrUnauthenticated)
}

func TestTokenCredential(t *testing.T) {
	r := newRegistry(t)
	push(t, r, "tok/app:1", simpleImage(t, "token"))
	u, err := url.Parse(r.URL)
	if err != nil {
		t.Fatal(err)
	}
	// A registry front that accepts one bearer token (and challenges with
	// Basic, so clients send what they have without a token exchange).
	proxy := httputil.NewSingleHostReverseProxy(u)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Header.Get("Authorization") != "Bearer tok-123" {
			w.Header().Set("WWW-Authenticate", `Basic realm="front"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		proxy.ServeHTTP(w, req)
	}))
	t.Cleanup(front.Close)
	host := strings.TrimPrefix(front.URL, "http://")
	ref := host + "/tok/app:1"

	withToken, _ := serve(t, setup{registry: &sdk.RegistrySettings{
		Credentials: []sdk.RegistryCredential{{Registry: host, Token: "tok-123"}},
	}})
	pull(t, withToken, ref)
	without, _ := serve(t, setup{})
	_, err = without.Pull(testCtx(t), sdk.PullRequest{Reference: ref}, nil)
	wantRemote(t, "no token", err, sdk.ErrUnauthenticated)
}

func TestMirror(t *testing.T) {
	r := newRegistry(t)
	img := simpleImage(t, "mirrored")
	push(t, r, "library/busybox:1.36", img)
	imgs, _ := serve(t, setup{registry: &sdk.RegistrySettings{
		Mirrors: []sdk.RegistryMirror{{Registry: "docker.io", Endpoints: []string{"http://" + r.Host}}},
	}})
	got := pull(t, imgs, "busybox:1.36")
	if got.Digest != digestOf(t, img) || !slices.Equal(got.References, []string{"docker.io/library/busybox:1.36"}) {
		t.Errorf("pull through the mirror: %v", got)
	}
	if r.ManifestGets() == 0 {
		t.Error("the mirror was not asked")
	}
	if gi, err := imgs.GetImage(testCtx(t), "busybox:1.36"); err != nil || gi.Digest != got.Digest {
		t.Errorf("GetImage by the short name: %v, %v", gi, err)
	}
	// Docker Hub under another of its names, as users write it.
	gets := r.ManifestGets()
	hub, _ := serve(t, setup{registry: &sdk.RegistrySettings{
		Mirrors: []sdk.RegistryMirror{{Registry: "https://index.docker.io/", Endpoints: []string{"http://" + r.Host}}},
	}})
	pull(t, hub, "docker.io/library/busybox:1.36")
	if r.ManifestGets() == gets {
		t.Error("a mirror for index.docker.io was not used for docker.io")
	}
}

func TestConfigBlock(t *testing.T) {
	configure := func(body string) error {
		c := sdktest.Serve(t, sdk.ServeConfig{Images: plugin.New()}).Images
		return c.Configure(testCtx(t), &sdk.Config{
			Filename:  "/etc/boxctl/boxctl.hcl",
			Body:      []byte(body),
			BodyStart: hcl.Pos{Line: 10, Column: 11, Byte: 180},
			StateDir:  t.TempDir(),
		})
	}
	for _, tc := range []struct {
		name, body string
		line       int
		summary    string
		detail     string
	}{
		{"unknown attribute", "\n  concurrency = 3\n  bogus = 1\n", 12, "Unsupported argument", "bogus"},
		{"unknown block", "\n  mirror \"x\" {}\n", 11, "Unsupported block type", ""},
		{"zero concurrency", "\n  concurrency = 0\n", 11, "Invalid concurrency", "between 1 and 32"},
		{"huge concurrency", "\n\n  concurrency = 1000\n", 12, "Invalid concurrency", "1000"},
		{"concurrency of the wrong type", "\n  concurrency = \"many\"\n", 11, "Unsuitable value type", ""},
		{"platform without architecture", "\n  platform = \"linux\"\n", 11, "Invalid platform", "linux/amd64"},
		{"non-Linux platform", "\n  platform = \"windows/amd64\"\n", 11, "Invalid platform", "Linux guests"},
		{"syntax error", "\n  concurrency = \n", 11, "", ""},
		{"unpacked size without a number", "\n  max_unpacked_size = \"lots\"\n", 11, "Invalid max_unpacked_size", "512MiB"},
		{"zero unpacked size", "\n\n  max_unpacked_size = \"0\"\n", 12, "Invalid max_unpacked_size", "more than 0"},
		{"unpacked size of the wrong type", "\n  max_unpacked_size = [1]\n", 11, "Unsuitable value type", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := configure(tc.body)
			var diags hcl.Diagnostics
			if !errors.As(err, &diags) || !diags.HasErrors() {
				t.Fatalf("got %v, want HCL diagnostics", err)
			}
			d := diags[0]
			if d.Subject == nil || d.Subject.Filename != "/etc/boxctl/boxctl.hcl" || d.Subject.Start.Line != tc.line {
				t.Fatalf("diagnostic %v at %v, want /etc/boxctl/boxctl.hcl:%d", d, d.Subject, tc.line)
			}
			if !strings.Contains(d.Summary, tc.summary) || !strings.Contains(d.Detail, tc.detail) {
				t.Errorf("diagnostic %q / %q, want %q / %q", d.Summary, d.Detail, tc.summary, tc.detail)
			}
		})
	}
	if err := configure("\n  concurrency = 5\n  platform = \"linux/arm64/v8\"\n  max_unpacked_size = \"200GiB\"\n"); err != nil {
		t.Errorf("a good block: %v", err)
	}
	if err := configure(""); err != nil {
		t.Errorf("no block: %v", err)
	}

	// Without a state dir the plugin is unusable, and says why.
	c := sdktest.Serve(t, sdk.ServeConfig{Images: plugin.New()}).Images
	err := c.Configure(testCtx(t), &sdk.Config{})
	if err == nil || !strings.Contains(err.Error(), "state directory") {
		t.Errorf("no state dir: %v", err)
	}
	_, err = c.ListImages(testCtx(t))
	wantRemote(t, "list after a failed configure", err, sdk.ErrInvalidState)
}
