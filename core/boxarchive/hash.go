package boxarchive

import (
	"crypto/sha256"
	"hash"
	"sync"
)

// asyncHash is a SHA-256 computed on its own goroutine: the member streams
// are as fast as zstd can go only if hashing does not take turns with it.
// Write copies p (the caller may reuse it at once); Sum waits for what was
// written. Memory is bounded by a few in-flight buffers.
type asyncHash struct {
	h    hash.Hash
	ch   chan []byte
	pool sync.Pool
	done chan struct{}
	sum  []byte
}

const asyncHashChunk = 1 << 20

func newAsyncHash() *asyncHash {
	a := &asyncHash{h: sha256.New(), ch: make(chan []byte, 4), done: make(chan struct{})}
	a.pool.New = func() any { b := make([]byte, 0, asyncHashChunk); return &b }
	go func() {
		defer close(a.done)
		for b := range a.ch {
			a.h.Write(b)
			b = b[:0]
			a.pool.Put(&b)
		}
	}()
	return a
}

func (a *asyncHash) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		bp := a.pool.Get().(*[]byte)
		k := min(len(p), asyncHashChunk)
		b := append((*bp)[:0], p[:k]...)
		a.ch <- b
		p = p[k:]
	}
	return n, nil
}

// Sum ends the hash and returns it; call it once, after the last Write.
func (a *asyncHash) Sum() []byte {
	if a.sum == nil {
		close(a.ch)
		<-a.done
		a.sum = a.h.Sum(nil)
	}
	return a.sum
}

// Close stops the hashing goroutine (Sum does too); safe after Sum.
func (a *asyncHash) Close() { a.Sum() }
