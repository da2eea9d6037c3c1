package plugin

import (
	"maps"
	"slices"

	"github.com/boxctl/boxctl/plugins/registry-oci/internal/imagestore"
	"github.com/boxctl/boxctl/sdk"
)

// imageToSDK is a store record as the sdk describes images: Size is the
// compressed layers alone (what the image weighs in a registry listing), not
// the manifest and config the store counts too.
func imageToSDK(img imagestore.Image) sdk.Image {
	var layerBytes int64
	for _, l := range img.Layers {
		layerBytes += l.Size
	}
	c := img.Config
	return sdk.Image{
		Digest:     img.Digest,
		References: slices.Clone(img.Refs),
		Platform: sdk.Platform{
			OS:           img.Platform.OS,
			Architecture: img.Platform.Architecture,
			Variant:      img.Platform.Variant,
		},
		Size:      uint64(max(layerBytes, 0)),
		CreatedAt: c.Created,
		PulledAt:  img.PulledAt,
		Config: sdk.ImageConfig{
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
}

func layerProgress(ev imagestore.ProgressEvent) *sdk.LayerProgress {
	return &sdk.LayerProgress{
		Digest: ev.Layer,
		Total:  uint64(max(ev.Total, 0)),
		Done:   uint64(max(ev.Done, 0)),
		State:  layerState(ev.State),
	}
}

func layerState(s imagestore.LayerState) sdk.LayerState {
	switch s {
	case imagestore.LayerWaiting:
		return sdk.LayerWaiting
	case imagestore.LayerDownloading:
		return sdk.LayerDownloading
	case imagestore.LayerVerifying:
		return sdk.LayerVerifying
	case imagestore.LayerDone:
		return sdk.LayerDone
	case imagestore.LayerCached:
		return sdk.LayerCached
	}
	return sdk.LayerUnspecified
}

func removedToSDK(rep imagestore.PruneReport) sdk.Removed {
	return sdk.Removed{Images: rep.Images, Reclaimed: uint64(max(rep.BytesFreed, 0))}
}
