package sdk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	pluginv1 "github.com/boxctl/boxctl/sdk/proto/v1"
)

// ImageSource pulls images, keeps the cache and builds root disks. See
// image.proto for the contract (references, concurrency, errors).
type ImageSource interface {
	Plugin
	// Pull resolves and downloads req.Reference. Progress events go to
	// progress, which may be nil; the pulled image is returned.
	Pull(ctx context.Context, req PullRequest, progress func(PullEvent)) (Image, error)
	// GetImage looks an image up in the cache (by reference or digest)
	// without network access. ErrNotFound if it is not cached.
	GetImage(ctx context.Context, image string) (Image, error)
	// RootDisk returns the read-only root filesystem disk of a cached
	// image, building it on first use.
	RootDisk(ctx context.Context, image string) (RootDisk, error)
	// ListImages lists cached images, newest first.
	ListImages(ctx context.Context) ([]Image, error)
	// RemoveImage removes a cached image (by reference: that tag; by
	// digest: the image and all its tags).
	RemoveImage(ctx context.Context, image string) (Removed, error)
}

// Pruner is an optional ImageSource feature: remove cached images not in
// Keep, and unreferenced blobs.
type Pruner interface {
	Prune(ctx context.Context, req PruneRequest) (Removed, error)
}

// ReferenceChecker is an optional ImageSource feature: validate a reference
// (and platform) without pulling and without network access — the syntax,
// and that a local layout or archive exists. It returns the reference in
// canonical form.
type ReferenceChecker interface {
	CheckReference(ctx context.Context, req PullRequest) (string, error)
}

// Committer is an optional ImageSource feature: a new cached image made of
// a cached image and one more layer (`boxctl commit`). See image.proto.
type Committer interface {
	Commit(ctx context.Context, req CommitRequest) (Image, error)
}

// CommitRequest is a new image: the cached image Base plus one layer.
type CommitRequest struct {
	// Base is the digest of a cached image.
	Base string
	// LayerPath is an uncompressed OCI layer tar on this host (whiteouts
	// for deletions), read during the call. It is untrusted input.
	LayerPath string
	// Reference names the new image: name[:tag], a registry reference.
	Reference string
	// Config, if set, changes the base's config: each field set (a
	// non-empty list, map or string) replaces the base's.
	Config *ImageConfig
	// Comment and Author go into the new history entry (Author also into
	// the config).
	Comment, Author string
}

// Pusher is an optional ImageSource feature: upload a cached image to the
// registry its reference names, with the credentials pulls use. It returns
// the pushed manifest digest. Progress events (Layer.State Downloading:
// bytes going out; Cached: the registry had the blob) go to progress, which
// may be nil.
type Pusher interface {
	Push(ctx context.Context, req PushRequest, progress func(PullEvent)) (string, error)
}

// PushRequest names the cached image to push, by its registry reference.
type PushRequest struct {
	Reference string
}

// ImageExporter is an optional ImageSource feature: write a cached image
// as an OCI image layout directory (dest, which must not exist) that
// pulls back as the same image with oci-layout:DEST@DIGEST. `boxctl export
// --with-image` uses it.
type ImageExporter interface {
	ExportImage(ctx context.Context, digest, dest string) error
}

// Platform is an OS and CPU architecture, as in OCI image indexes.
type Platform struct {
	OS, Architecture, Variant string
}

func (p Platform) String() string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// ParsePlatform parses "os/arch[/variant]".
func ParsePlatform(s string) (Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return Platform{}, fmt.Errorf("platform %q: use os/arch[/variant], e.g. linux/arm64: %w", s, ErrInvalidArgument)
	}
	p := Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

// PullRequest names an image to pull; a nil Platform means the host's.
type PullRequest struct {
	Reference string
	Platform  *Platform
}

// PullEvent is progress during a pull: a layer's progress or a status line.
type PullEvent struct {
	Layer  *LayerProgress
	Status string
}

// LayerState is where a layer is in a pull.
type LayerState int

const (
	LayerUnspecified LayerState = iota
	LayerWaiting
	LayerDownloading
	LayerVerifying
	LayerDone
	// LayerCached: already in the cache, nothing downloaded.
	LayerCached
)

func (s LayerState) String() string {
	return [...]string{"unspecified", "waiting", "downloading", "verifying", "done", "cached"}[s]
}

// LayerProgress is one layer's progress.
type LayerProgress struct {
	Digest string
	Total  uint64
	Done   uint64
	State  LayerState
}

// Image is a cached image.
type Image struct {
	// Digest is the manifest digest, "sha256:...".
	Digest string
	// References that point at this image in the cache.
	References []string
	Platform   Platform
	// Size is the sum of compressed layer sizes.
	Size      uint64
	CreatedAt time.Time
	PulledAt  time.Time
	Config    ImageConfig
}

// ImageConfig is what an image says about running it.
type ImageConfig struct {
	Entrypoint   []string
	Cmd          []string
	Env          []string
	WorkingDir   string
	User         string
	ExposedPorts []string
	Labels       map[string]string
	StopSignal   string
}

// RootDisk is an image's read-only root filesystem disk.
type RootDisk struct {
	Path string
	// Format is "raw" (a filesystem image); Filesystem "ext4".
	Format     string
	Filesystem string
	Size       uint64
	Image      Image
}

// Removed is what RemoveImage and Prune removed.
type Removed struct {
	// Images are the digests of images removed entirely (not only
	// untagged).
	Images    []string
	Reclaimed uint64
}

// PruneRequest keeps the images boxes use; All removes tagged images too.
type PruneRequest struct {
	Keep []string
	All  bool
}

type imagePlugin struct {
	plugin.NetRPCUnsupportedPlugin
	impl ImageSource
	life *lifecycles
}

func (p *imagePlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pluginv1.RegisterImageSourceServer(s, &imageServer{baseServer: newBaseServer(p.impl, p.life, imageCapabilities), impl: p.impl})
	return nil
}

func (p *imagePlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return NewImageSourceClient(conn), nil
}

func imageCapabilities(impl Plugin, c *Capabilities) {
	if _, ok := impl.(Pruner); ok {
		c.Prune = true
	}
	if _, ok := impl.(ReferenceChecker); ok {
		c.CheckReferences = true
	}
	if _, ok := impl.(Committer); ok {
		c.Commit = true
	}
	if _, ok := impl.(Pusher); ok {
		c.Push = true
	}
	if _, ok := impl.(ImageExporter); ok {
		c.ExportImage = true
	}
}

// ImageSourceClient is an ImageSource served by a plugin process, with
// every optional method (ErrUnsupported where the plugin lacks it).
type ImageSourceClient interface {
	ImageSource
	Pruner
	ReferenceChecker
	Committer
	Pusher
	ImageExporter
}

// NewImageSourceClient returns an ImageSource that calls a plugin over conn.
func NewImageSourceClient(conn grpc.ClientConnInterface) ImageSourceClient {
	c := pluginv1.NewImageSourceClient(conn)
	return &imageClient{baseClient: baseClient{c}, c: c}
}

type imageClient struct {
	baseClient
	c pluginv1.ImageSourceClient
}

func (i *imageClient) Pull(ctx context.Context, req PullRequest, progress func(PullEvent)) (Image, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := i.c.Pull(ctx, pullToProto(req))
	if err != nil {
		return Image{}, fromStatus(err)
	}
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return Image{}, fmt.Errorf("pull %s: the plugin ended the pull without an image", req.Reference)
		}
		if err != nil {
			return Image{}, fromStatus(err)
		}
		if img := ev.GetImage(); img != nil {
			return imageFromProto(img), nil
		}
		if progress != nil {
			progress(eventFromProto(ev))
		}
	}
}

func (i *imageClient) CheckReference(ctx context.Context, req PullRequest) (string, error) {
	resp, err := call(ctx, i.c.CheckReference, pullToProto(req))
	return resp.GetCanonical(), err
}

func imageResult(p *pluginv1.Image, err error) (Image, error) {
	if err != nil {
		return Image{}, err
	}
	return imageFromProto(p), nil
}

func (i *imageClient) GetImage(ctx context.Context, image string) (Image, error) {
	return imageResult(call(ctx, i.c.GetImage, &pluginv1.ImageRequest{Image: image}))
}

func (i *imageClient) RootDisk(ctx context.Context, image string) (RootDisk, error) {
	resp, err := call(ctx, i.c.RootDisk, &pluginv1.ImageRequest{Image: image})
	if err != nil {
		return RootDisk{}, err
	}
	return RootDisk{Path: resp.GetPath(), Format: resp.GetFormat(), Filesystem: resp.GetFilesystem(), Size: resp.GetSizeBytes(), Image: imageFromProto(resp.GetImage())}, nil
}

func (i *imageClient) ListImages(ctx context.Context) ([]Image, error) {
	resp, err := call(ctx, i.c.ListImages, &pluginv1.ListImagesRequest{})
	if err != nil {
		return nil, err
	}
	out := make([]Image, 0, len(resp.GetImages()))
	for _, img := range resp.GetImages() {
		out = append(out, imageFromProto(img))
	}
	return out, nil
}

func (i *imageClient) RemoveImage(ctx context.Context, image string) (Removed, error) {
	resp, err := call(ctx, i.c.RemoveImage, &pluginv1.ImageRequest{Image: image})
	return Removed{Images: resp.GetRemoved(), Reclaimed: resp.GetReclaimedBytes()}, err
}

func (i *imageClient) ExportImage(ctx context.Context, digest, dest string) error {
	_, err := call(ctx, i.c.ExportImage, &pluginv1.ExportImageRequest{Image: digest, Dest: dest})
	return err
}

func (i *imageClient) Prune(ctx context.Context, req PruneRequest) (Removed, error) {
	resp, err := call(ctx, i.c.Prune, &pluginv1.PruneRequest{Keep: req.Keep, All: req.All})
	return Removed{Images: resp.GetRemoved(), Reclaimed: resp.GetReclaimedBytes()}, err
}

func (i *imageClient) Commit(ctx context.Context, req CommitRequest) (Image, error) {
	return imageResult(call(ctx, i.c.Commit, &pluginv1.CommitRequest{
		Base: req.Base, LayerPath: req.LayerPath, Reference: req.Reference,
		Config: configToProto(req.Config), Comment: req.Comment, Author: req.Author,
	}))
}

func (i *imageClient) Push(ctx context.Context, req PushRequest, progress func(PullEvent)) (string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := i.c.Push(ctx, &pluginv1.PushRequest{Reference: req.Reference})
	if err != nil {
		return "", fromStatus(err)
	}
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return "", fmt.Errorf("push %s: the plugin ended the push without a digest", req.Reference)
		}
		if err != nil {
			return "", fromStatus(err)
		}
		if d := ev.GetDigest(); d != "" {
			return d, nil
		}
		if progress == nil {
			continue
		}
		if l := ev.GetLayer(); l != nil {
			progress(eventFromProto(&pluginv1.PullEvent{Event: &pluginv1.PullEvent_Layer{Layer: l}}))
		} else {
			progress(PullEvent{Status: ev.GetStatus()})
		}
	}
}

type imageServer struct {
	pluginv1.UnimplementedImageSourceServer
	baseServer
	impl ImageSource
}

func (s *imageServer) Info(ctx context.Context, req *pluginv1.InfoRequest) (*pluginv1.InfoResponse, error) {
	return s.baseServer.Info(ctx, req)
}

func (s *imageServer) Configure(ctx context.Context, req *pluginv1.ConfigureRequest) (*pluginv1.ConfigureResponse, error) {
	return s.baseServer.Configure(ctx, req)
}

func (s *imageServer) Pull(req *pluginv1.PullRequest, stream grpc.ServerStreamingServer[pluginv1.PullEvent]) error {
	if err := s.ready(); err != nil {
		return err
	}
	var sendErr error
	img, err := s.impl.Pull(stream.Context(), pullFromProto(req), func(ev PullEvent) {
		if sendErr == nil {
			sendErr = stream.Send(eventToProto(ev))
		}
	})
	if err != nil {
		return toStatus(err)
	}
	if sendErr != nil {
		return sendErr
	}
	return stream.Send(&pluginv1.PullEvent{Event: &pluginv1.PullEvent_Image{Image: imageToProto(img)}})
}

func (s *imageServer) CheckReference(ctx context.Context, req *pluginv1.PullRequest) (*pluginv1.CheckReferenceResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	rc, ok := s.impl.(ReferenceChecker)
	if !ok {
		return nil, unsupported("CheckReference")
	}
	canonical, err := rc.CheckReference(ctx, pullFromProto(req))
	return handle(&pluginv1.CheckReferenceResponse{Canonical: canonical}, err)
}

func (s *imageServer) GetImage(ctx context.Context, req *pluginv1.ImageRequest) (*pluginv1.Image, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	img, err := s.impl.GetImage(ctx, req.GetImage())
	return handle(imageToProto(img), err)
}

func (s *imageServer) RootDisk(ctx context.Context, req *pluginv1.ImageRequest) (*pluginv1.RootDiskResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	rd, err := s.impl.RootDisk(ctx, req.GetImage())
	return handle(&pluginv1.RootDiskResponse{Path: rd.Path, Format: rd.Format, Filesystem: rd.Filesystem, SizeBytes: rd.Size, Image: imageToProto(rd.Image)}, err)
}

func (s *imageServer) ListImages(ctx context.Context, _ *pluginv1.ListImagesRequest) (*pluginv1.ListImagesResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	imgs, err := s.impl.ListImages(ctx)
	resp := &pluginv1.ListImagesResponse{}
	for _, img := range imgs {
		resp.Images = append(resp.Images, imageToProto(img))
	}
	return handle(resp, err)
}

func (s *imageServer) RemoveImage(ctx context.Context, req *pluginv1.ImageRequest) (*pluginv1.RemoveImageResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	r, err := s.impl.RemoveImage(ctx, req.GetImage())
	return handle(&pluginv1.RemoveImageResponse{Removed: r.Images, ReclaimedBytes: r.Reclaimed}, err)
}

func (s *imageServer) Prune(ctx context.Context, req *pluginv1.PruneRequest) (*pluginv1.PruneResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	p, ok := s.impl.(Pruner)
	if !ok {
		return nil, unsupported("Prune")
	}
	r, err := p.Prune(ctx, PruneRequest{Keep: req.GetKeep(), All: req.GetAll()})
	return handle(&pluginv1.PruneResponse{Removed: r.Images, ReclaimedBytes: r.Reclaimed}, err)
}

func (s *imageServer) Commit(ctx context.Context, req *pluginv1.CommitRequest) (*pluginv1.Image, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	c, ok := s.impl.(Committer)
	if !ok {
		return nil, unsupported("Commit")
	}
	var cfg *ImageConfig
	if req.GetConfig() != nil {
		v := configFromProto(req.GetConfig())
		cfg = &v
	}
	img, err := c.Commit(ctx, CommitRequest{
		Base: req.GetBase(), LayerPath: req.GetLayerPath(), Reference: req.GetReference(),
		Config: cfg, Comment: req.GetComment(), Author: req.GetAuthor(),
	})
	return handle(imageToProto(img), err)
}

func (s *imageServer) Push(req *pluginv1.PushRequest, stream grpc.ServerStreamingServer[pluginv1.PushEvent]) error {
	if err := s.ready(); err != nil {
		return err
	}
	p, ok := s.impl.(Pusher)
	if !ok {
		return unsupported("Push")
	}
	var sendErr error
	digest, err := p.Push(stream.Context(), PushRequest{Reference: req.GetReference()}, func(ev PullEvent) {
		if sendErr != nil {
			return
		}
		out := &pluginv1.PushEvent{Event: &pluginv1.PushEvent_Status{Status: ev.Status}}
		if l := eventToProto(ev).GetLayer(); l != nil {
			out = &pluginv1.PushEvent{Event: &pluginv1.PushEvent_Layer{Layer: l}}
		}
		sendErr = stream.Send(out)
	})
	if err != nil {
		return toStatus(err)
	}
	if sendErr != nil {
		return sendErr
	}
	if digest == "" {
		return toStatus(fmt.Errorf("push %s: the plugin reported no digest", req.GetReference()))
	}
	return stream.Send(&pluginv1.PushEvent{Event: &pluginv1.PushEvent_Digest{Digest: digest}})
}

func (s *imageServer) ExportImage(ctx context.Context, req *pluginv1.ExportImageRequest) (*pluginv1.ExportImageResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	e, ok := s.impl.(ImageExporter)
	if !ok {
		return nil, unsupported("ExportImage")
	}
	return handle(&pluginv1.ExportImageResponse{}, e.ExportImage(ctx, req.GetImage(), req.GetDest()))
}

func pullToProto(r PullRequest) *pluginv1.PullRequest {
	out := &pluginv1.PullRequest{Reference: r.Reference}
	if r.Platform != nil {
		out.Platform = &pluginv1.Platform{Os: r.Platform.OS, Architecture: r.Platform.Architecture, Variant: r.Platform.Variant}
	}
	return out
}

func pullFromProto(p *pluginv1.PullRequest) PullRequest {
	r := PullRequest{Reference: p.GetReference()}
	if pl := p.GetPlatform(); pl != nil {
		r.Platform = &Platform{OS: pl.GetOs(), Architecture: pl.GetArchitecture(), Variant: pl.GetVariant()}
	}
	return r
}

func eventToProto(ev PullEvent) *pluginv1.PullEvent {
	if l := ev.Layer; l != nil {
		return &pluginv1.PullEvent{Event: &pluginv1.PullEvent_Layer{Layer: &pluginv1.LayerProgress{
			Digest: l.Digest, TotalBytes: l.Total, DoneBytes: l.Done, State: pluginv1.LayerProgress_State(l.State),
		}}}
	}
	return &pluginv1.PullEvent{Event: &pluginv1.PullEvent_Status{Status: ev.Status}}
}

func eventFromProto(p *pluginv1.PullEvent) PullEvent {
	if l := p.GetLayer(); l != nil {
		return PullEvent{Layer: &LayerProgress{Digest: l.GetDigest(), Total: l.GetTotalBytes(), Done: l.GetDoneBytes(), State: LayerState(l.GetState())}}
	}
	return PullEvent{Status: p.GetStatus()}
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

func imageToProto(i Image) *pluginv1.Image {
	return &pluginv1.Image{
		Digest: i.Digest, References: i.References, SizeBytes: i.Size,
		Platform:  &pluginv1.Platform{Os: i.Platform.OS, Architecture: i.Platform.Architecture, Variant: i.Platform.Variant},
		CreatedAt: unixNano(i.CreatedAt), PulledAt: unixNano(i.PulledAt),
		Config: configToProto(&i.Config),
	}
}

func configToProto(c *ImageConfig) *pluginv1.ImageConfig {
	if c == nil {
		return nil
	}
	return &pluginv1.ImageConfig{
		Entrypoint: c.Entrypoint, Cmd: c.Cmd, Env: c.Env, WorkingDir: c.WorkingDir, User: c.User,
		ExposedPorts: c.ExposedPorts, Labels: c.Labels, StopSignal: c.StopSignal,
	}
}

func configFromProto(c *pluginv1.ImageConfig) ImageConfig {
	return ImageConfig{
		Entrypoint: c.GetEntrypoint(), Cmd: c.GetCmd(), Env: c.GetEnv(), WorkingDir: c.GetWorkingDir(), User: c.GetUser(),
		ExposedPorts: c.GetExposedPorts(), Labels: c.GetLabels(), StopSignal: c.GetStopSignal(),
	}
}

func imageFromProto(p *pluginv1.Image) Image {
	pl := p.GetPlatform()
	return Image{
		Digest: p.GetDigest(), References: p.GetReferences(), Size: p.GetSizeBytes(),
		Platform:  Platform{OS: pl.GetOs(), Architecture: pl.GetArchitecture(), Variant: pl.GetVariant()},
		CreatedAt: fromUnixNano(p.GetCreatedAt()), PulledAt: fromUnixNano(p.GetPulledAt()),
		Config: configFromProto(p.GetConfig()),
	}
}
