package api

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/boxctl/boxctl/core"
)

// OpenAPI is the OpenAPI 3 document of this API, served at /openapi.json.
//
//go:embed openapi.json
var OpenAPI []byte

// Defaults of the server's limits (see the With* options).
const (
	DefaultMaxBodyBytes    = 1 << 20
	DefaultMaxUploadBytes  = 4 << 30
	DefaultMaxOutputBytes  = 16 << 20
	DefaultMaxExecsPerConn = 16
	DefaultMaxExecs        = 256
	DefaultWriteTimeout    = 30 * time.Second
)

// Server serves the API over one runtime. It is an http.Handler; install
// ConnContext in the http.Server for the per-connection exec limit.
type Server struct {
	rt     *core.Runtime
	log    hclog.Logger
	token  string
	mux    *http.ServeMux
	routes []Route

	maxBody, maxUpload, maxOutput int64
	maxExecsPerConn               int
	writeTimeout                  time.Duration
	execs                         chan struct{} // a slot per running exec

	// base ends every exec when the server shuts down.
	base    context.Context
	cancel  context.CancelFunc
	mu      sync.Mutex // guards closing, and active.Add against Shutdown's Wait
	closing bool
	active  sync.WaitGroup
}

// Route is one method and path of the API, in OpenAPI path syntax.
type Route struct {
	Method, Path string
	// Public routes need no token.
	Public bool
}

// Option configures a Server.
type Option func(*Server)

// WithToken requires "Authorization: Bearer TOKEN" on every route except
// GET /v1/health and GET /openapi.json. Without it (the unix socket, whose
// file mode is the access control) no token is asked for.
func WithToken(token string) Option { return func(s *Server) { s.token = token } }

// WithLogger logs requests that fail at debug level and server errors at warn.
func WithLogger(l hclog.Logger) Option { return func(s *Server) { s.log = l } }

// WithMaxBodyBytes bounds JSON request bodies.
func WithMaxBodyBytes(n int64) Option { return func(s *Server) { s.maxBody = n } }

// WithMaxUploadBytes bounds file uploads and box imports.
func WithMaxUploadBytes(n int64) Option { return func(s *Server) { s.maxUpload = n } }

// WithMaxOutputBytes bounds what a one-shot exec collects of each of stdout
// and stderr; the rest is dropped and the response says so.
func WithMaxOutputBytes(n int64) Option { return func(s *Server) { s.maxOutput = n } }

// WithExecLimits bounds the execs (one-shot and streaming) running at once
// on one connection and in the whole server.
func WithExecLimits(perConn, total int) Option {
	return func(s *Server) { s.maxExecsPerConn, s.execs = perConn, make(chan struct{}, total) }
}

// WithWriteTimeout bounds how long the server waits for a client to take
// one frame of exec output; a client slower than that loses its exec.
func WithWriteTimeout(d time.Duration) Option { return func(s *Server) { s.writeTimeout = d } }

// NewServer returns the API server over rt.
func NewServer(rt *core.Runtime, opts ...Option) *Server {
	s := &Server{
		rt: rt, log: hclog.NewNullLogger(), mux: http.NewServeMux(),
		maxBody: DefaultMaxBodyBytes, maxUpload: DefaultMaxUploadBytes, maxOutput: DefaultMaxOutputBytes,
		maxExecsPerConn: DefaultMaxExecsPerConn, execs: make(chan struct{}, DefaultMaxExecs),
		writeTimeout: DefaultWriteTimeout,
	}
	for _, o := range opts {
		o(s)
	}
	s.base, s.cancel = context.WithCancel(context.Background())
	s.handle("GET /v1/health", true, s.health)
	s.handle("GET /openapi.json", true, s.openapi)
	s.handle("GET /v1/metrics", false, s.metrics)
	s.handle("GET /v1/boxes", false, s.listBoxes)
	s.handle("POST /v1/boxes", false, s.createBox)
	s.handle("POST /v1/boxes/import", false, s.importBox)
	s.handle("GET /v1/boxes/{id}", false, s.getBox)
	s.handle("DELETE /v1/boxes/{id}", false, s.removeBox)
	s.handle("POST /v1/boxes/{id}/start", false, s.startBox)
	s.handle("POST /v1/boxes/{id}/stop", false, s.stopBox)
	s.handle("GET /v1/boxes/{id}/stats", false, s.boxStats)
	s.handle("POST /v1/boxes/{id}/exec", false, s.exec)
	s.handle("GET /v1/boxes/{id}/exec/ws", false, s.execWS)
	s.handle("PUT /v1/boxes/{id}/files", false, s.putFiles)
	s.handle("GET /v1/boxes/{id}/files", false, s.getFiles)
	s.handle("GET /v1/boxes/{id}/files/stat", false, s.statFile)
	s.handle("GET /v1/boxes/{id}/files/list", false, s.listFiles)
	s.handle("GET /v1/boxes/{id}/snapshots", false, s.listSnapshots)
	s.handle("POST /v1/boxes/{id}/snapshots", false, s.createSnapshot)
	s.handle("DELETE /v1/boxes/{id}/snapshots/{name}", false, s.removeSnapshot)
	s.handle("POST /v1/boxes/{id}/snapshots/{name}/restore", false, s.restoreSnapshot)
	s.handle("POST /v1/boxes/{id}/clone", false, s.clone)
	s.handle("GET /v1/boxes/{id}/export", false, s.export)
	s.handle("GET /v1/boxes/{id}/checkpoints", false, s.listCheckpoints)
	s.handle("POST /v1/boxes/{id}/checkpoints", false, s.createCheckpoint)
	s.handle("DELETE /v1/boxes/{id}/checkpoints/{name}", false, s.removeCheckpoint)
	s.handle("POST /v1/boxes/{id}/checkpoints/{name}/restore", false, s.restoreCheckpoint)
	s.handle("POST /v1/boxes/{id}/fork", false, s.fork)
	s.handle("GET /v1/images", false, s.listImages)
	s.handle("POST /v1/images/pull", false, s.pullImage)
	s.handle("DELETE /v1/images", false, s.removeImage)
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if !s.authorized(r) {
			writeError(w, &apiError{code: CodeUnauthorized, msg: "missing or wrong bearer token"})
			return
		}
		writeError(w, &apiError{code: CodeNotFound, msg: fmt.Sprintf("no route %s %s: see /openapi.json", r.Method, r.URL.Path)})
	})
	return s
}

// Routes lists the routes the server serves.
func (s *Server) Routes() []Route { return append([]Route(nil), s.routes...) }

func (s *Server) handle(pattern string, public bool, h http.HandlerFunc) {
	method, path, _ := strings.Cut(pattern, " ")
	s.routes = append(s.routes, Route{Method: method, Path: path, Public: public})
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if !public && !s.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="boxctl"`)
			writeError(w, &apiError{code: CodeUnauthorized, msg: "missing or wrong bearer token: send Authorization: Bearer TOKEN (the token is in the server's --token-file)"})
			return
		}
		h(w, r)
	})
}

func (s *Server) authorized(r *http.Request) bool {
	if s.token == "" {
		return true
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(s.token)) == 1
}

// ServeHTTP serves one request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	closing := s.closing
	s.mu.Unlock()
	if closing {
		writeError(w, &apiError{code: CodeShutDown, msg: "the API server is shutting down"})
		return
	}
	s.mux.ServeHTTP(w, r)
}

// Shutdown refuses new execs, lets the running ones finish until ctx ends,
// then ends those left (their commands are killed: nobody would own them)
// and waits a few seconds for their handlers. Boxes are left as they are.
// Run it alongside http.Server.Shutdown, which does not wait for WebSocket
// connections.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.active.Wait(); close(done) }()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
	}
	s.cancel()
	select {
	case <-done:
	case <-time.After(shutdownGrace):
	}
	return ctx.Err()
}

// shutdownGrace is how long Shutdown waits for execs it has ended.
const shutdownGrace = 5 * time.Second

// connKey finds a connection's exec counter in a request's context.
type connKey struct{}

// ConnContext gives each connection its own exec counter; install it as
// http.Server.ConnContext.
func ConnContext(ctx context.Context, _ net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, new(atomic.Int64))
}

// acquireExec takes an exec slot for the request's connection and the
// server, or says why not. The context it returns ends when the request
// does or when Shutdown ends the execs left; release gives the slots back.
func (s *Server) acquireExec(r *http.Request) (ctx context.Context, release func(), err error) {
	perConn, _ := r.Context().Value(connKey{}).(*atomic.Int64) // nil without ConnContext
	if perConn != nil {
		if perConn.Add(1) > int64(s.maxExecsPerConn) {
			perConn.Add(-1)
			return nil, nil, &apiError{code: CodeTooManyRequests, msg: fmt.Sprintf("this connection already runs %d execs, the limit: wait for one to end or open another connection", s.maxExecsPerConn)}
		}
	}
	releaseGlobal, err := s.acquireGlobal(r)
	if err != nil {
		if perConn != nil {
			perConn.Add(-1)
		}
		return nil, nil, err
	}
	ctx, stop := s.execContext(r.Context())
	return ctx, func() {
		stop()
		releaseGlobal()
		if perConn != nil {
			perConn.Add(-1)
		}
	}, nil
}

func (s *Server) acquireGlobal(*http.Request) (func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return nil, &apiError{code: CodeShutDown, msg: "the API server is shutting down"}
	}
	select {
	case s.execs <- struct{}{}:
		s.active.Add(1)
		return func() { <-s.execs; s.active.Done() }, nil
	default:
		return nil, &apiError{code: CodeTooManyRequests, msg: fmt.Sprintf("the server already runs %d execs, its limit: try again later", cap(s.execs))}
	}
}

// execContext ends with the request or with the server.
func (s *Server) execContext(parent context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancel(parent)
	stop := context.AfterFunc(s.base, cancel)
	return ctx, func() { stop(); cancel() }
}

// decode reads a JSON body (bounded by the body limit) into v. An empty
// body leaves v as it is.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any) error {
	body := http.MaxBytesReader(w, r.Body, s.maxBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &apiError{code: CodeTooLarge, msg: fmt.Sprintf("request body over %d bytes", s.maxBody)}
		}
		return badRequest(fmt.Sprintf("request body: %v", err))
	}
	if dec.More() {
		return badRequest("request body: one JSON object expected, found more")
	}
	return nil
}

func (s *Server) health(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, Health{Status: "ok", Home: s.rt.Home()})
}

func (s *Server) openapi(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(OpenAPI)
}

func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	m, err := s.rt.Metrics(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, m)
}
