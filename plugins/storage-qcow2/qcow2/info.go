package qcow2

import (
	"fmt"
	"os"
	"syscall"
)

// LayerInfo describes one image file of a backing chain.
type LayerInfo struct {
	// Path is the path as given for the top image, and the resolved path
	// (QEMU's "full-backing-filename") for backing files.
	Path string
	// Format is "qcow2" or "raw".
	Format string
	// VirtualSize is the guest-visible size in bytes.
	VirtualSize int64
	// ActualSize is the space allocated on the host (st_blocks * 512).
	ActualSize int64
	// ClusterSize is 0 for raw files.
	ClusterSize int64
	// BackingFile and BackingFormat are as recorded in the header.
	BackingFile   string
	BackingFormat string
	// Dirty reports the qcow2 dirty bit (lazy refcounts in use).
	Dirty bool
}

// ImageInfo is what Info returns: the image itself and its backing chain.
type ImageInfo struct {
	LayerInfo
	// BackingChain lists the backing files, nearest first; empty for a
	// standalone image.
	BackingChain []LayerInfo
}

// Info describes the image at path (qcow2 or raw, probed) and its backing
// chain, like `qemu-img info --backing-chain`. Only headers are read.
func Info(path string) (*ImageInfo, error) {
	top, err := layerInfo(path, "", false)
	if err != nil {
		return nil, fmt.Errorf("info %s: %w", path, err)
	}
	info := &ImageInfo{LayerInfo: top.LayerInfo}
	seen := []os.FileInfo{top.fi}
	cur := top
	for cur.BackingFile != "" {
		if err := checkBackingName(cur.BackingFile); err != nil {
			return nil, fmt.Errorf("info %s: %w", path, err)
		}
		if len(seen) >= maxChainDepth {
			return nil, fmt.Errorf("info %s: %w: backing chain deeper than %d", path, ErrBackingFile, maxChainDepth)
		}
		bpath := ResolveBacking(cur.Path, cur.BackingFile)
		next, err := layerInfo(bpath, cur.BackingFormat, true)
		if err != nil {
			return nil, fmt.Errorf("info %s: %w %s: %w", path, ErrBackingFile, bpath, err)
		}
		for _, s := range seen {
			if os.SameFile(s, next.fi) {
				return nil, fmt.Errorf("info %s: %w: backing chain loops back to %s", path, ErrBackingFile, bpath)
			}
		}
		seen = append(seen, next.fi)
		info.BackingChain = append(info.BackingChain, next.LayerInfo)
		cur = next
	}
	return info, nil
}

type layerStat struct {
	LayerInfo
	fi os.FileInfo
}

// layerInfo reads one chain element's header; backing says it is a
// backing file (opened as openBackingFile does), not the top image.
func layerInfo(path, format string, backing bool) (layerStat, error) {
	open := openStat
	if backing {
		open = openBackingFile
	}
	f, fi, err := open(path)
	if err != nil {
		return layerStat{}, err
	}
	defer f.Close()
	li := layerStat{LayerInfo: LayerInfo{Path: path}, fi: fi}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		li.ActualSize = st.Blocks * 512
	}
	if format == "" {
		if format, err = probeFormat(f); err != nil {
			return layerStat{}, err
		}
	}
	li.Format = format
	switch format {
	case FormatRaw:
		li.VirtualSize, err = fileSize(f, fi)
		return li, err
	case FormatQcow2:
		h, err := readHeader(f, fi.Size())
		if err != nil {
			return layerStat{}, err
		}
		li.VirtualSize = int64(h.size)
		li.ClusterSize = h.clusterSize()
		li.BackingFile = h.backingFile
		li.BackingFormat = h.backingFormat
		li.Dirty = h.incompat&incompatDirty != 0
		return li, nil
	}
	return layerStat{}, fmt.Errorf("%w: format %q", ErrUnsupported, format)
}
