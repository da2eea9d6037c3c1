package flatten

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/layer"
)

// Decompression dominates the stream pass (inflating gzip runs at a few
// hundred MB/s on one core), and the consumer, which re-encodes the tar and
// feeds the ext4 writer, would otherwise wait on it with other cores idle.
// So the layers the stream pass reads are decompressed on goroutines of
// their own, several at once and ahead of the consumer, into bounded
// in-memory queues.
const (
	aheadChunk = 1 << 20
	// aheadChunks bounds how far one layer is decompressed ahead of the
	// consumer. A queue only fills when decompression outruns the consumer,
	// and then a deeper one would not make the stream any faster.
	aheadChunks = 16
)

// readAhead runs the decompressors of the layers in order, at most one per
// CPU at a time.
type readAhead struct {
	layers []*aheadLayer // indexed like Plan.layers; nil for layers not read
	free   chan []byte   // recycled chunks
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// aheadLayer is one layer's decompressed stream, produced by its own
// goroutine and read by the stream pass through Read.
type aheadLayer struct {
	ra      *readAhead
	ctx     context.Context
	cancel  context.CancelFunc
	ready   chan struct{} // closed once the blob is open and its compression known
	openErr error         // set before ready is closed
	chunks  chan []byte   // filled chunks in order; closed at the end
	readErr error         // set before chunks is closed; io.EOF at the end

	cur, hand []byte // unread rest of the chunk in hand, and all of it
}

func (p *Plan) startReadAhead(ctx context.Context) *readAhead {
	ctx, cancel := context.WithCancel(ctx)
	workers := max(1, runtime.GOMAXPROCS(0))
	ra := &readAhead{
		layers: make([]*aheadLayer, len(p.layers)),
		free:   make(chan []byte, workers*(aheadChunks+1)),
		cancel: cancel,
	}
	var order []int
	for li := range p.layers {
		if p.last[li] < 0 {
			continue
		}
		lctx, lcancel := context.WithCancel(ctx)
		ra.layers[li] = &aheadLayer{
			ra: ra, ctx: lctx, cancel: lcancel,
			ready:  make(chan struct{}),
			chunks: make(chan []byte, aheadChunks),
		}
		order = append(order, li)
	}
	sem := make(chan struct{}, workers)
	ra.wg.Add(1)
	// Slots are taken in layer order, so the layer the consumer reads next
	// is always decompressing or done: a full queue never holds up the one
	// the consumer waits on.
	go func() {
		defer ra.wg.Done()
		for i, li := range order {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				for _, lj := range order[i:] {
					ra.layers[lj].fail(context.Cause(ctx))
				}
				return
			}
			ra.wg.Add(1)
			go func() {
				defer ra.wg.Done()
				defer func() { <-sem }()
				ra.layers[li].produce(p.layers[li])
			}()
		}
	}()
	return ra
}

// close stops every decompressor and waits until all blobs are closed.
func (ra *readAhead) close() {
	ra.cancel()
	ra.wg.Wait()
}

func (ra *readAhead) chunk() []byte {
	select {
	case b := <-ra.free:
		return b
	default:
		return make([]byte, aheadChunk)
	}
}

func (ra *readAhead) recycle(b []byte) {
	select {
	case ra.free <- b[:cap(b)]:
	default:
	}
}

// open waits until the layer's blob is open and returns its decompressed
// stream.
func (a *aheadLayer) open() (io.Reader, error) {
	<-a.ready
	if a.openErr != nil {
		return nil, a.openErr
	}
	return a, nil
}

// done stops decompressing the rest of the layer, which the stream pass
// does not need.
func (a *aheadLayer) done() { a.cancel() }

func (a *aheadLayer) fail(err error) {
	a.openErr = err
	close(a.ready)
	close(a.chunks)
}

// produce decompresses l into the queue until the end, an error or
// cancellation.
func (a *aheadLayer) produce(l Layer) {
	blob, err := l.Open()
	if err != nil {
		a.fail(fmt.Errorf("open layer %s: %w", l.Digest, err))
		return
	}
	defer blob.Close()
	dr, _, err := layer.Decompress(blob)
	if err != nil {
		a.fail(&layer.BadLayerError{Layer: l.Digest, Err: err})
		return
	}
	defer dr.Close()
	close(a.ready)
	defer close(a.chunks)
	for {
		buf := a.ra.chunk()
		n, err := io.ReadFull(dr, buf)
		if n > 0 {
			select {
			case a.chunks <- buf[:n]:
			case <-a.ctx.Done():
				a.readErr = a.ctx.Err()
				return
			}
		} else {
			a.ra.recycle(buf)
		}
		switch {
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			a.readErr = io.EOF
			return
		case err != nil:
			a.readErr = err
			return
		}
	}
}

// Read implements io.Reader over the queued chunks.
func (a *aheadLayer) Read(p []byte) (int, error) {
	for len(a.cur) == 0 {
		if a.hand != nil {
			a.ra.recycle(a.hand)
			a.hand = nil
		}
		b, ok := <-a.chunks
		if !ok {
			return 0, a.readErr
		}
		a.cur, a.hand = b, b
	}
	n := copy(p, a.cur)
	a.cur = a.cur[n:]
	return n, nil
}
