package api

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestExecLimitsPerConnectionAndServer(t *testing.T) {
	s := NewServer(nil, WithExecLimits(2, 3))
	onConn := func() *http.Request {
		r := httptest.NewRequest("POST", "/v1/boxes/b/exec", nil)
		return r.WithContext(ConnContext(context.Background(), nil))
	}
	code := func(err error) string {
		var ae *apiError
		if errors.As(err, &ae) {
			return ae.code
		}
		return ""
	}
	a := onConn()
	_, rel1, err := s.acquireExec(a)
	if err != nil {
		t.Fatal(err)
	}
	_, rel2, err := s.acquireExec(a)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.acquireExec(a); code(err) != CodeTooManyRequests {
		t.Fatalf("third exec on a connection with a limit of 2: %v", err)
	}
	b := onConn()
	_, rel3, err := s.acquireExec(b)
	if err != nil {
		t.Fatalf("another connection: %v", err)
	}
	if _, _, err := s.acquireExec(b); code(err) != CodeTooManyRequests {
		t.Fatalf("fourth exec in a server with a limit of 3: %v", err)
	}
	rel1()
	ctx, rel4, err := s.acquireExec(a)
	if err != nil {
		t.Fatalf("after one ended: %v", err)
	}
	// Shutdown lets running execs go on until its context ends, refusing
	// new ones; then it ends them and waits for their handlers.
	sctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(sctx) }()
	select {
	case <-ctx.Done():
		t.Fatal("Shutdown ended a running exec before its timeout")
	case <-time.After(100 * time.Millisecond):
	}
	if _, _, err := s.acquireExec(b); code(err) != CodeShutDown {
		t.Fatalf("exec while shutting down: %v", err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not end a running exec after its timeout")
	}
	select {
	case <-done:
		t.Fatal("Shutdown returned while exec handlers were still running")
	case <-time.After(50 * time.Millisecond):
	}
	rel2()
	rel3()
	rel4()
	if err := <-done; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown that had to end execs: %v, want the deadline's error", err)
	}
	if _, _, err := s.acquireExec(b); code(err) != CodeShutDown {
		t.Fatalf("exec after Shutdown: %v", err)
	}
}
