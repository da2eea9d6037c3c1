package testimages

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Registry is an in-memory OCI registry on loopback (go-containerregistry's
// pkg/registry) wrapped to count requests and to misbehave on demand.
type Registry struct {
	*httptest.Server
	// Host is "127.0.0.1:port"; references are Host + "/repo:tag".
	Host  string
	inner http.Handler

	mu        sync.Mutex
	blobGets  map[string]int
	ranges    map[string][]string
	manifests int
	stalls    map[string]*stall
	corrupt   map[string]bool
	overrides map[string][]byte
	delay     time.Duration
	user      string
	pass      string
}

type stall struct {
	after   int64
	release chan struct{}
	once    sync.Once
}

// NewRegistry starts a registry; Close stops it.
func NewRegistry() *Registry {
	r := &Registry{
		inner:     registry.New(registry.Logger(log.New(io.Discard, "", 0))),
		blobGets:  map[string]int{},
		ranges:    map[string][]string{},
		stalls:    map[string]*stall{},
		corrupt:   map[string]bool{},
		overrides: map[string][]byte{},
	}
	r.Server = httptest.NewServer(http.HandlerFunc(r.serve))
	r.Host = strings.TrimPrefix(r.Server.URL, "http://")
	return r
}

// Close releases stalled requests and stops the server.
func (r *Registry) Close() {
	r.mu.Lock()
	for _, s := range r.stalls {
		s.once.Do(func() { close(s.release) })
	}
	r.mu.Unlock()
	r.Server.CloseClientConnections()
	r.Server.Close()
}

// Ref returns the full reference for repo[:tag] on this registry.
func (r *Registry) Ref(repoTag string) string { return r.Host + "/" + repoTag }

// Push uploads an image as repo:tag (fault injection only affects GETs;
// push before requiring auth).
func (r *Registry) Push(repoTag string, img v1.Image) error {
	ref, err := name.ParseReference(r.Ref(repoTag))
	if err != nil {
		return err
	}
	return remote.Write(ref, img)
}

// PushIndex uploads a multi-platform index as repo:tag.
func (r *Registry) PushIndex(repoTag string, idx v1.ImageIndex) error {
	ref, err := name.ParseReference(r.Ref(repoTag))
	if err != nil {
		return err
	}
	return remote.WriteIndex(ref, idx)
}

// BlobGets is how many GET requests blob d received.
func (r *Registry) BlobGets(d v1.Hash) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.blobGets[d.String()]
}

// TotalBlobGets counts all blob GET requests.
func (r *Registry) TotalBlobGets() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.blobGets {
		n += c
	}
	return n
}

// RangeRequests lists the Range headers of GETs of blob d ("" for none).
func (r *Registry) RangeRequests(d v1.Hash) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.ranges[d.String()]...)
}

// ManifestGets counts manifest GET requests.
func (r *Registry) ManifestGets() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.manifests
}

// StallBlob makes GETs of blob d send the first `after` bytes and then hang
// until release is called (or the client goes away).
func (r *Registry) StallBlob(d v1.Hash, after int64) (release func()) {
	s := &stall{after: after, release: make(chan struct{})}
	r.mu.Lock()
	r.stalls[d.String()] = s
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		delete(r.stalls, d.String())
		r.mu.Unlock()
		s.once.Do(func() { close(s.release) })
	}
}

// CorruptBlob makes GETs of blob d return the right length but one wrong
// byte (a hostile or broken registry).
func (r *Registry) CorruptBlob(d v1.Hash) {
	r.mu.Lock()
	r.corrupt[d.String()] = true
	r.mu.Unlock()
}

// OverrideManifest makes GETs of /v2/<repo>/manifests/<ident> return body
// (as an OCI manifest) regardless of what was pushed: a lying registry.
func (r *Registry) OverrideManifest(repo, ident string, body []byte) {
	r.mu.Lock()
	r.overrides["/v2/"+repo+"/manifests/"+ident] = body
	r.mu.Unlock()
}

// SetBlobDelay delays every blob GET, so concurrent clients overlap.
func (r *Registry) SetBlobDelay(d time.Duration) {
	r.mu.Lock()
	r.delay = d
	r.mu.Unlock()
}

// RequireBasicAuth makes every request need these credentials.
func (r *Registry) RequireBasicAuth(user, pass string) {
	r.mu.Lock()
	r.user, r.pass = user, pass
	r.mu.Unlock()
}

func (r *Registry) serve(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	user, pass := r.user, r.pass
	delay := r.delay
	r.mu.Unlock()
	if user != "" {
		u, p, ok := req.BasicAuth()
		if !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="testimages"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
			return
		}
	}
	parts := strings.Split(req.URL.Path, "/")
	isBlob := req.Method == http.MethodGet && len(parts) >= 4 && parts[len(parts)-2] == "blobs"
	if req.Method == http.MethodGet && len(parts) >= 4 && parts[len(parts)-2] == "manifests" {
		r.mu.Lock()
		r.manifests++
		body, ok := r.overrides[req.URL.Path]
		r.mu.Unlock()
		if ok {
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.Write(body)
			return
		}
	}
	if !isBlob {
		r.inner.ServeHTTP(w, req)
		return
	}
	d := parts[len(parts)-1]
	r.mu.Lock()
	r.blobGets[d]++
	r.ranges[d] = append(r.ranges[d], req.Header.Get("Range"))
	st := r.stalls[d]
	bad := r.corrupt[d]
	r.mu.Unlock()
	if delay > 0 {
		time.Sleep(delay)
	}
	if st == nil && !bad {
		r.inner.ServeHTTP(w, req)
		return
	}
	rec := httptest.NewRecorder()
	r.inner.ServeHTTP(rec, req)
	res := rec.Result()
	body, _ := io.ReadAll(res.Body)
	for k, v := range res.Header {
		w.Header()[k] = v
	}
	if res.StatusCode/100 != 2 {
		w.WriteHeader(res.StatusCode)
		w.Write(body)
		return
	}
	if bad && len(body) > 0 {
		body[len(body)/2] ^= 0xff
	}
	w.WriteHeader(res.StatusCode)
	if st != nil && st.after < int64(len(body)) {
		w.Write(body[:st.after])
		w.(http.Flusher).Flush()
		select {
		case <-st.release:
		case <-req.Context().Done():
			return
		}
		body = body[st.after:]
	}
	w.Write(body)
}
