package sdk

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	pluginv1 "github.com/boxctl/boxctl/sdk/proto/v1"
)

// ImageSource pulls images, keeps the cache and builds root disks. See
// image.proto for the contract.
type ImageSource interface {
	Plugin
	// Pull resolves and downloads ref. Progress events (layer progress and
	// status lines) go to progress, which may be nil; the pulled image is
	// returned.
	Pull(ctx context.Context, req *pluginv1.PullRequest, progress func(*pluginv1.PullEvent)) (*pluginv1.Image, error)
	GetImage(ctx context.Context, image string) (*pluginv1.Image, error)
	RootDisk(ctx context.Context, image string) (*pluginv1.RootDiskResponse, error)
	ListImages(ctx context.Context) ([]*pluginv1.Image, error)
	RemoveImage(ctx context.Context, image string) (*pluginv1.RemoveImageResponse, error)
	Prune(ctx context.Context, req *pluginv1.PruneRequest) (*pluginv1.PruneResponse, error)
}

// ReferenceChecker is an optional ImageSource feature: validate a
// reference (and platform) without pulling and without network access.
// The client returned by NewImageSourceClient always has it; a plugin that
// does not implement it answers ErrUnsupported.
type ReferenceChecker interface {
	CheckReference(ctx context.Context, req *pluginv1.PullRequest) (*pluginv1.CheckReferenceResponse, error)
}

type imagePlugin struct {
	plugin.NetRPCUnsupportedPlugin
	impl ImageSource
}

func (p *imagePlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pluginv1.RegisterImageSourceServer(s, &imageServer{baseServer: baseServer{p.impl}, impl: p.impl})
	return nil
}

func (p *imagePlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return NewImageSourceClient(conn), nil
}

// NewImageSourceClient returns an ImageSource that calls a plugin over conn.
func NewImageSourceClient(conn grpc.ClientConnInterface) ImageSource {
	c := pluginv1.NewImageSourceClient(conn)
	return &imageClient{baseClient: baseClient{c}, c: c}
}

type imageClient struct {
	baseClient
	c pluginv1.ImageSourceClient
}

func (i *imageClient) Pull(ctx context.Context, req *pluginv1.PullRequest, progress func(*pluginv1.PullEvent)) (*pluginv1.Image, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := i.c.Pull(ctx, req)
	if err != nil {
		return nil, fromStatus(err)
	}
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("pull %s: the plugin ended the pull without an image", req.GetReference())
		}
		if err != nil {
			return nil, fromStatus(err)
		}
		if img := ev.GetImage(); img != nil {
			return img, nil
		}
		if progress != nil {
			progress(ev)
		}
	}
}

func (i *imageClient) CheckReference(ctx context.Context, req *pluginv1.PullRequest) (*pluginv1.CheckReferenceResponse, error) {
	return call(ctx, i.c.CheckReference, req)
}

func (i *imageClient) GetImage(ctx context.Context, image string) (*pluginv1.Image, error) {
	return call(ctx, i.c.GetImage, &pluginv1.ImageRequest{Image: image})
}

func (i *imageClient) RootDisk(ctx context.Context, image string) (*pluginv1.RootDiskResponse, error) {
	return call(ctx, i.c.RootDisk, &pluginv1.ImageRequest{Image: image})
}

func (i *imageClient) ListImages(ctx context.Context) ([]*pluginv1.Image, error) {
	resp, err := call(ctx, i.c.ListImages, &pluginv1.ListImagesRequest{})
	return resp.GetImages(), err
}

func (i *imageClient) RemoveImage(ctx context.Context, image string) (*pluginv1.RemoveImageResponse, error) {
	return call(ctx, i.c.RemoveImage, &pluginv1.ImageRequest{Image: image})
}

func (i *imageClient) Prune(ctx context.Context, req *pluginv1.PruneRequest) (*pluginv1.PruneResponse, error) {
	return call(ctx, i.c.Prune, req)
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
	var sendErr error
	img, err := s.impl.Pull(stream.Context(), req, func(ev *pluginv1.PullEvent) {
		if sendErr == nil && ev != nil {
			sendErr = stream.Send(ev)
		}
	})
	if err != nil {
		return toStatus(err)
	}
	if sendErr != nil {
		return sendErr
	}
	return stream.Send(&pluginv1.PullEvent{Event: &pluginv1.PullEvent_Image{Image: img}})
}

func (s *imageServer) CheckReference(ctx context.Context, req *pluginv1.PullRequest) (*pluginv1.CheckReferenceResponse, error) {
	rc, ok := s.impl.(ReferenceChecker)
	if !ok {
		return nil, toStatus(fmt.Errorf("CheckReference: %w", ErrUnsupported))
	}
	return handle(rc.CheckReference(ctx, req))
}

func (s *imageServer) GetImage(ctx context.Context, req *pluginv1.ImageRequest) (*pluginv1.Image, error) {
	return handle(s.impl.GetImage(ctx, req.GetImage()))
}

func (s *imageServer) RootDisk(ctx context.Context, req *pluginv1.ImageRequest) (*pluginv1.RootDiskResponse, error) {
	return handle(s.impl.RootDisk(ctx, req.GetImage()))
}

func (s *imageServer) ListImages(ctx context.Context, _ *pluginv1.ListImagesRequest) (*pluginv1.ListImagesResponse, error) {
	imgs, err := s.impl.ListImages(ctx)
	return handle(&pluginv1.ListImagesResponse{Images: imgs}, err)
}

func (s *imageServer) RemoveImage(ctx context.Context, req *pluginv1.ImageRequest) (*pluginv1.RemoveImageResponse, error) {
	return handle(s.impl.RemoveImage(ctx, req.GetImage()))
}

func (s *imageServer) Prune(ctx context.Context, req *pluginv1.PruneRequest) (*pluginv1.PruneResponse, error) {
	return handle(s.impl.Prune(ctx, req))
}
