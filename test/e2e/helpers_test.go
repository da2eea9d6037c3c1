package e2e

import (
	"crypto/md5"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

func md5sum(b []byte) [16]byte { return md5.Sum(b) }

// termReader collects a pseudo-terminal's output in the background.
type termReader struct {
	mu  sync.Mutex
	buf strings.Builder
}

func newTermReader(r io.Reader) *termReader {
	t := &termReader{}
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := r.Read(b)
			t.mu.Lock()
			t.buf.Write(b[:n])
			t.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return t
}

func (t *termReader) text() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf.String()
}

func (t *termReader) seen(s string) bool { return strings.Contains(t.text(), s) }

func (t *termReader) expect(tb testing.TB, s string) {
	tb.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !t.seen(s) {
		if time.Now().After(deadline) {
			tb.Fatalf("terminal never showed %q; output:\n%s", s, t.text())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
