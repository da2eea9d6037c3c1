package blobstore

import (
	"errors"
	"io"
	"sync"
)

// checker feeds a copy of the streamed content to a Check function running in
// its own goroutine. A small queue between them lets hashing and writing
// overlap with the (CPU-heavy) check, such as decompressing a layer.
type checker struct {
	ch     chan []byte
	quit   chan struct{} // closed when the check function has returned
	result error
	once   sync.Once
}

const checkQueue = 8

func startCheck(fn func(io.Reader) error) *checker {
	c := &checker{ch: make(chan []byte, checkQueue), quit: make(chan struct{})}
	go func() {
		r := &chanReader{ch: c.ch}
		err := fn(r)
		if err == nil {
			// Consume whatever the check left so the writer never blocks.
			_, err = io.Copy(io.Discard, r)
		}
		c.result = err
		close(c.quit)
		// Keep draining so a writer racing with quit never blocks forever.
		for range c.ch {
		}
	}()
	return c
}

// Write queues a copy of p. It fails once the check has rejected the content.
func (c *checker) Write(p []byte) (int, error) {
	b := make([]byte, len(p))
	copy(b, p)
	select {
	case c.ch <- b:
		return len(p), nil
	case <-c.quit:
		if c.result != nil {
			return 0, &checkFailed{c.result}
		}
		return 0, &checkFailed{errors.New("content check ended early")}
	}
}

// finish signals the end of the content and waits for the verdict.
func (c *checker) finish() error {
	c.once.Do(func() { close(c.ch) })
	<-c.quit
	return c.result
}

// abort ends the check (it sees a truncated stream) and waits for it.
func (c *checker) abort() {
	c.once.Do(func() { close(c.ch) })
	<-c.quit
}

type chanReader struct {
	ch  chan []byte
	cur []byte
}

func (r *chanReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		b, ok := <-r.ch
		if !ok {
			return 0, io.EOF
		}
		r.cur = b
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}
