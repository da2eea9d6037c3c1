// Package ctxio bounds long copies by a context: io.Copy has no context of
// its own, and a copy of gigabytes (a disk, an archive) must stop when its
// caller gives up. Shared by core and plugins.
package ctxio

import (
	"context"
	"io"
)

// Reader returns r reading only while ctx is live: once ctx ends, the next
// Read returns ctx's error.
func Reader(ctx context.Context, r io.Reader) io.Reader { return reader{ctx, r} }

type reader struct {
	ctx context.Context
	r   io.Reader
}

func (c reader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
