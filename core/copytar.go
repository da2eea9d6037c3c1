package core

import (
	"context"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/boxctl/boxctl/core/model"

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
	return r.withAgent(ctx, ref, "upload a tar into", func(ctx context.Context, b *model.Box, c *agentclient.Client) error {
		if _, err := c.Upload(ctx, dest, tr, agentclient.UploadOptions{Overwrite: !opts.NoOverwrite, PreserveOwner: opts.Archive}); err != nil {
			if agentclient.IsEscape(err) {
				return fmt.Errorf("upload a tar into %s:%s: refused: %w", b.Name, dest, err)
			}
			return fmt.Errorf("upload a tar into %s:%s: %w", b.Name, dest, err)
		}
		return nil
	})
}

// DownloadTar writes a tar of the box path src to w, its entries named
// from src's last element (or, for a src ending in "/.", from inside it).
// The tar comes from the guest and is not trusted: extract it with
// guest/tarsafe (as CopyOut does), never with a plain tar reader.
func (r *Runtime) DownloadTar(ctx context.Context, ref, src string, w io.Writer, opts CopyOptions) (err error) {
	if src == "" {
		return errEmptyBoxPath(ref)
	}
	return r.withAgent(ctx, ref, "copy out of", func(ctx context.Context, b *model.Box, c *agentclient.Client) error {
		contentsOnly := strings.HasSuffix(src, "/.")
		err := c.Download(ctx, path.Clean("/"+src), w, agentclient.DownloadOptions{FollowSymlinks: opts.FollowSymlinks, IncludeParent: !contentsOnly})
		if err != nil {
			if agentclient.IsNotFound(err) {
				return fmt.Errorf("copy %s:%s: no such file or directory in the box: %w", b.Name, src, ErrNotFound)
			}
			return fmt.Errorf("copy %s:%s: %w", b.Name, src, err)
		}
		return nil
	})
}
