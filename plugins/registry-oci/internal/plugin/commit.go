package plugin

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/imagestore"
	"github.com/boxctl/boxctl/sdk"
)

var (
	_ sdk.Committer = (*Plugin)(nil)
	_ sdk.Pusher    = (*Plugin)(nil)
)

// Commit implements sdk.Committer: base (a digest or anything GetImage
// accepts) plus the layer at req.LayerPath, tagged req.Reference.
func (p *Plugin) Commit(ctx context.Context, req sdk.CommitRequest) (sdk.Image, error) {
	st, err := p.current()
	if err != nil {
		return sdk.Image{}, err
	}
	if req.LayerPath == "" || !filepath.IsAbs(req.LayerPath) {
		return sdk.Image{}, fmt.Errorf("%w: commit: layer path %q must be an absolute path on this host", sdk.ErrInvalidArgument, req.LayerPath)
	}
	base, _, err := find(st, req.Base)
	if err != nil {
		return sdk.Image{}, err
	}
	var changes *imagestore.ConfigChanges
	if c := req.Config; c != nil {
		changes = &imagestore.ConfigChanges{
			Entrypoint: c.Entrypoint, Cmd: c.Cmd, Env: c.Env, WorkingDir: c.WorkingDir, User: c.User,
			ExposedPorts: c.ExposedPorts, Labels: c.Labels, StopSignal: c.StopSignal,
		}
	}
	img, err := st.Commit(ctx, imagestore.CommitOptions{
		Base: base.Digest, LayerPath: req.LayerPath, Reference: req.Reference,
		Changes: changes, Comment: req.Comment, Author: req.Author,
	})
	if err != nil {
		p.log.Debug("commit failed", "base", base.Digest, "reference", req.Reference, "error", err)
		return sdk.Image{}, err
	}
	p.log.Info("committed", "reference", img.Ref, "digest", img.Digest, "base", base.Digest)
	return imageToSDK(img), nil
}

// Push implements sdk.Pusher.
func (p *Plugin) Push(ctx context.Context, req sdk.PushRequest, progress func(sdk.PullEvent)) (string, error) {
	st, err := p.current()
	if err != nil {
		return "", err
	}
	var mu sync.Mutex
	send := func(ev sdk.PullEvent) {
		if progress == nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		progress(ev)
	}
	digest, err := st.Push(ctx, req.Reference, imagestore.PushOptions{
		Progress: func(ev imagestore.ProgressEvent) { send(sdk.PullEvent{Layer: layerProgress(ev)}) },
		Status: func(line string) {
			p.log.Info(line)
			send(sdk.PullEvent{Status: line})
		},
	})
	if err != nil {
		p.log.Debug("push failed", "reference", req.Reference, "error", err)
		return "", err
	}
	return digest, nil
}
