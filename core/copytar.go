package core

import (
	"context"
	"fmt"
	"io"
	"path"

	"github.com/boxctl/boxctl/guest/agentclient"
)

// UploadTar extracts the tar stream r into the box directory dest (created
// if missing), as CopyIn does with a host path: the guest agent confines
// the extraction to the box's root. It serves callers that hold a tar
// stream rather than host files (the API server).
func (r *Runtime) UploadTar(ctx context.Context, ref string, tr io.Reader, dest string, opts CopyOptions) (err error) {
	if dest == "" {
		return errEmptyBoxPath(ref)
	}
	if opts.UnsafeSpecialFiles || opts.FollowSymlinks {
		return fmt.Errorf("upload a tar into %s: the symlink and special-file options apply to copies out of a box only: %w", ref, ErrInvalidArgument)
	}
	b, err := r.runningBox(ctx, ref)
	if err != nil {
		return err
	}
	w := r.watchRun(ctx, b)
	defer func() { err = w.err(err); w.stop() }()
	ctx = w.ctx
	c, err := agentclient.Dial(ctx, b.Run.AgentSocket)
	if err != nil {
		return fmt.Errorf("copy into %s: reach the guest agent: %w", b.Name, err)
	}
	defer c.Close()
	if _, err := c.Upload(ctx, dest, tr, agentclient.UploadOptions{Overwrite: !opts.NoOverwrite, PreserveOwner: opts.Archive}); err != nil {
		if agentclient.IsEscape(err) {
			return fmt.Errorf("upload a tar into %s:%s: refused: %w", b.Name, dest, err)
		}
		return fmt.Errorf("upload a tar into %s:%s: %w", b.Name, dest, err)
	}
	return nil
}

// DownloadTar writes a tar of the box path src to w, its entries named
// from src's last element (or, for a src ending in "/.", from inside it).
// The tar comes from the guest and is not trusted: extract it with
// guest/tarsafe (as CopyOut does), never with a plain tar reader.
func (r *Runtime) DownloadTar(ctx context.Context, ref, src string, w io.Writer, opts CopyOptions) (err error) {
	if src == "" {
		return errEmptyBoxPath(ref)
	}
	b, err := r.runningBox(ctx, ref)
	if err != nil {
		return err
	}
	wr := r.watchRun(ctx, b)
	defer func() { err = wr.err(err); wr.stop() }()
	ctx = wr.ctx
	c, err := agentclient.Dial(ctx, b.Run.AgentSocket)
	if err != nil {
		return fmt.Errorf("copy out of %s: reach the guest agent: %w", b.Name, err)
	}
	defer c.Close()
	contentsOnly := len(src) >= 2 && src[len(src)-2:] == "/."
	err = c.Download(ctx, path.Clean("/"+src), w, agentclient.DownloadOptions{FollowSymlinks: opts.FollowSymlinks, IncludeParent: !contentsOnly})
	if err != nil {
		if agentclient.IsNotFound(err) {
			return fmt.Errorf("copy %s:%s: no such file or directory in the box: %w", b.Name, src, ErrNotFound)
		}
		return fmt.Errorf("copy %s:%s: %w", b.Name, src, err)
	}
	return nil
}
