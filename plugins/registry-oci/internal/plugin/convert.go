package plugin

import (
	"maps"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/imagestore"
	pluginv1 "github.com/boxctl/boxctl/sdk/proto/v1"
)

func imageToProto(img imagestore.Image) *pluginv1.Image {
	var layerBytes int64
	for _, l := range img.Layers {
		layerBytes += l.Size
	}
	c := img.Config
	out := &pluginv1.Image{
		Digest:     img.Digest,
		References: append([]string(nil), img.Refs...),
		Platform: &pluginv1.Platform{
			Os:           img.Platform.OS,
			Architecture: img.Platform.Architecture,
			Variant:      img.Platform.Variant,
		},
		SizeBytes: uint64(max(layerBytes, 0)),
		Config: &pluginv1.ImageConfig{
			Entrypoint:   c.Entrypoint,
			Cmd:          c.Cmd,
			Env:          c.Env,
			WorkingDir:   c.WorkingDir,
			User:         c.User,
			ExposedPorts: c.ExposedPorts,
			Labels:       maps.Clone(c.Labels),
			StopSignal:   c.StopSignal,
		},
	}
	// Images built for reproducibility say 1970-01-01; only an absent
	// date is left as 0.
	if !c.Created.IsZero() {
		out.CreatedAt = c.Created.UnixNano()
	}
	if !img.PulledAt.IsZero() {
		out.PulledAt = img.PulledAt.UnixNano()
	}
	return out
}

func layerProgress(ev imagestore.ProgressEvent) *pluginv1.LayerProgress {
	return &pluginv1.LayerProgress{
		Digest:     ev.Layer,
		TotalBytes: uint64(max(ev.Total, 0)),
		DoneBytes:  uint64(max(ev.Done, 0)),
		State:      layerState(ev.State),
	}
}

func layerState(s imagestore.LayerState) pluginv1.LayerProgress_State {
	switch s {
	case imagestore.LayerWaiting:
		return pluginv1.LayerProgress_STATE_WAITING
	case imagestore.LayerDownloading:
		return pluginv1.LayerProgress_STATE_DOWNLOADING
	case imagestore.LayerVerifying:
		return pluginv1.LayerProgress_STATE_VERIFYING
	case imagestore.LayerDone:
		return pluginv1.LayerProgress_STATE_DONE
	case imagestore.LayerCached:
		return pluginv1.LayerProgress_STATE_CACHED
	}
	return pluginv1.LayerProgress_STATE_UNSPECIFIED
}

// mapError is where store errors reach the wire. They already match the sdk
// error kind they cross as (package errdefs), so they pass unchanged.
func mapError(err error) error { return err }
