package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/boxctl/boxctl/core"
)

// TestOpenAPIMatchesRoutes checks the committed OpenAPI document against
// the routes the server really has: every route documented, nothing
// documented that the server lacks, public routes marked so.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	var doc struct {
		Paths      map[string]map[string]json.RawMessage `json:"paths"`
		Components struct {
			Schemas map[string]json.RawMessage `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(OpenAPI, &doc); err != nil {
		t.Fatalf("api/openapi.json: %v", err)
	}
	documented := map[string]bool{}
	public := map[string]bool{}
	for p, ops := range doc.Paths {
		for m, raw := range ops {
			key := strings.ToUpper(m) + " " + p
			documented[key] = true
			var op struct {
				Security *[]any `json:"security"`
			}
			if err := json.Unmarshal(raw, &op); err != nil {
				t.Fatalf("%s: %v", key, err)
			}
			public[key] = op.Security != nil && len(*op.Security) == 0
		}
	}
	served := map[string]bool{}
	for _, r := range NewServer(nil).Routes() {
		key := r.Method + " " + r.Path
		served[key] = true
		if !documented[key] {
			t.Errorf("route %s is not in api/openapi.json", key)
		} else if public[key] != r.Public {
			t.Errorf("route %s: public=%v in the server, %v in api/openapi.json", key, r.Public, public[key])
		}
	}
	for key := range documented {
		if !served[key] {
			t.Errorf("api/openapi.json documents %s, which the server does not serve", key)
		}
	}
	// Every schema reference resolves.
	for _, m := range regexp.MustCompile(`"#/components/schemas/([A-Za-z]+)"`).FindAllSubmatch(OpenAPI, -1) {
		if _, ok := doc.Components.Schemas[string(m[1])]; !ok {
			t.Errorf("api/openapi.json refers to schema %s, which it does not define", m[1])
		}
	}
	if len(served) < 30 {
		t.Errorf("only %d routes: the route table lost some", len(served))
	}
}

func TestErrorCodesFollowCoreSentinels(t *testing.T) {
	cases := map[error]struct {
		code   string
		status int
	}{
		core.ErrNotFound:        {CodeNotFound, 404},
		core.ErrAlreadyExists:   {CodeAlreadyExists, 409},
		core.ErrInvalidState:    {CodeInvalidState, 409},
		core.ErrInvalidArgument: {CodeInvalidArgument, 400},
		core.ErrUnsupported:     {CodeUnsupported, 501},
		core.ErrPermission:      {CodePermissionDenied, 403},
		core.ErrShutDown:        {CodeShutDown, 503},
		core.ErrAmbiguous:       {CodeAmbiguous, 409},
		fmt.Errorf("plain"):     {CodeInternal, 500},
	}
	for err, want := range cases {
		wrapped := fmt.Errorf("box web: %w", err)
		rec := httptest.NewRecorder()
		writeError(rec, wrapped)
		var body ErrorBody
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatal(err)
		}
		if rec.Code != want.status || body.Error.Code != want.code || body.Error.Message != wrapped.Error() {
			t.Errorf("%v: got %d %+v, want %d %s", err, rec.Code, body, want.status, want.code)
		}
	}
}

func TestTokenRequiredExceptOnPublicRoutes(t *testing.T) {
	srv := NewServer(nil, WithToken("s3cret-token-0123456789"))
	keys := []string{}
	for _, r := range srv.Routes() {
		keys = append(keys, r.Method+" "+r.Path)
		for _, auth := range []string{"", "Bearer wrong-token", "s3cret-token-0123456789"} {
			path := strings.NewReplacer("{id}", "b", "{name}", "n").Replace(r.Path)
			req := httptest.NewRequest(r.Method, path, nil)
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			rec := httptest.NewRecorder()
			if r.Public {
				continue // they call the runtime; the integration tests cover them
			}
			srv.ServeHTTP(rec, req)
			var body ErrorBody
			_ = json.Unmarshal(rec.Body.Bytes(), &body)
			if rec.Code != http.StatusUnauthorized || body.Error.Code != CodeUnauthorized {
				t.Errorf("%s %s with Authorization %q: %d %s, want 401 unauthorized", r.Method, path, auth, rec.Code, rec.Body)
			}
		}
	}
	sort.Strings(keys)
	// An unknown route is refused the same way without a token, so that
	// the route table is not probed.
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/nothing", nil))
	if rec.Code != http.StatusUnauthorized {
		t.Errorf("unknown route without a token: %d, want 401", rec.Code)
	}
}
