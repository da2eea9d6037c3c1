package sdk

import (
	"context"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	pluginv1 "github.com/boxctl/boxctl/sdk/proto/v1"
)

// DiskBackend stores the boxes' writable disks. See storage.proto for the
// contract (disk IDs, crash safety, concurrency).
type DiskBackend interface {
	Plugin
	CreateDisk(ctx context.Context, req *pluginv1.CreateDiskRequest) (*pluginv1.DiskInfo, error)
	GetDisk(ctx context.Context, diskID string) (*pluginv1.DiskInfo, error)
	FileInfo(ctx context.Context, path string) (*pluginv1.DiskInfo, error)
	Resize(ctx context.Context, req *pluginv1.ResizeRequest) (*pluginv1.DiskInfo, error)
	Export(ctx context.Context, req *pluginv1.ExportRequest) (*pluginv1.DiskInfo, error)
	Validate(ctx context.Context, req *pluginv1.ValidateRequest) (*pluginv1.ValidateResponse, error)
	Import(ctx context.Context, req *pluginv1.ImportRequest) (*pluginv1.DiskInfo, error)
	RemoveDisk(ctx context.Context, diskID string) error
	ListDisks(ctx context.Context) ([]*pluginv1.DiskInfo, error)
}

// SnapshotBackend keeps named point-in-time states of writable disks and
// clones them. See storage.proto for the contract.
type SnapshotBackend interface {
	Plugin
	CreateSnapshot(ctx context.Context, diskID, name string) (*pluginv1.Snapshot, error)
	ListSnapshots(ctx context.Context, diskID string) ([]*pluginv1.Snapshot, error)
	RestoreSnapshot(ctx context.Context, diskID, name string) (*pluginv1.Snapshot, error)
	RemoveSnapshot(ctx context.Context, diskID, name string) error
	Clone(ctx context.Context, req *pluginv1.CloneRequest) (*pluginv1.DiskInfo, error)
}

type diskPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	impl DiskBackend
}

func (p *diskPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pluginv1.RegisterDiskBackendServer(s, &diskServer{baseServer: baseServer{p.impl}, impl: p.impl})
	return nil
}

func (p *diskPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return NewDiskBackendClient(conn), nil
}

// NewDiskBackendClient returns a DiskBackend that calls a plugin over conn.
func NewDiskBackendClient(conn grpc.ClientConnInterface) DiskBackend {
	c := pluginv1.NewDiskBackendClient(conn)
	return &diskClient{baseClient: baseClient{c}, c: c}
}

type diskClient struct {
	baseClient
	c pluginv1.DiskBackendClient
}

func (d *diskClient) CreateDisk(ctx context.Context, req *pluginv1.CreateDiskRequest) (*pluginv1.DiskInfo, error) {
	return call(ctx, d.c.CreateDisk, req)
}

func (d *diskClient) GetDisk(ctx context.Context, diskID string) (*pluginv1.DiskInfo, error) {
	return call(ctx, d.c.GetDisk, &pluginv1.DiskRequest{DiskId: diskID})
}

func (d *diskClient) FileInfo(ctx context.Context, path string) (*pluginv1.DiskInfo, error) {
	return call(ctx, d.c.FileInfo, &pluginv1.FileInfoRequest{Path: path})
}

func (d *diskClient) Resize(ctx context.Context, req *pluginv1.ResizeRequest) (*pluginv1.DiskInfo, error) {
	return call(ctx, d.c.Resize, req)
}

func (d *diskClient) Export(ctx context.Context, req *pluginv1.ExportRequest) (*pluginv1.DiskInfo, error) {
	return call(ctx, d.c.Export, req)
}

func (d *diskClient) Validate(ctx context.Context, req *pluginv1.ValidateRequest) (*pluginv1.ValidateResponse, error) {
	return call(ctx, d.c.Validate, req)
}

func (d *diskClient) Import(ctx context.Context, req *pluginv1.ImportRequest) (*pluginv1.DiskInfo, error) {
	return call(ctx, d.c.Import, req)
}

func (d *diskClient) RemoveDisk(ctx context.Context, diskID string) error {
	_, err := call(ctx, d.c.RemoveDisk, &pluginv1.DiskRequest{DiskId: diskID})
	return err
}

func (d *diskClient) ListDisks(ctx context.Context) ([]*pluginv1.DiskInfo, error) {
	resp, err := call(ctx, d.c.ListDisks, &pluginv1.ListDisksRequest{})
	return resp.GetDisks(), err
}

type diskServer struct {
	pluginv1.UnimplementedDiskBackendServer
	baseServer
	impl DiskBackend
}

func (s *diskServer) Info(ctx context.Context, req *pluginv1.InfoRequest) (*pluginv1.InfoResponse, error) {
	return s.baseServer.Info(ctx, req)
}

func (s *diskServer) Configure(ctx context.Context, req *pluginv1.ConfigureRequest) (*pluginv1.ConfigureResponse, error) {
	return s.baseServer.Configure(ctx, req)
}

func (s *diskServer) CreateDisk(ctx context.Context, req *pluginv1.CreateDiskRequest) (*pluginv1.DiskInfo, error) {
	return handle(s.impl.CreateDisk(ctx, req))
}

func (s *diskServer) GetDisk(ctx context.Context, req *pluginv1.DiskRequest) (*pluginv1.DiskInfo, error) {
	return handle(s.impl.GetDisk(ctx, req.GetDiskId()))
}

func (s *diskServer) FileInfo(ctx context.Context, req *pluginv1.FileInfoRequest) (*pluginv1.DiskInfo, error) {
	return handle(s.impl.FileInfo(ctx, req.GetPath()))
}

func (s *diskServer) Resize(ctx context.Context, req *pluginv1.ResizeRequest) (*pluginv1.DiskInfo, error) {
	return handle(s.impl.Resize(ctx, req))
}

func (s *diskServer) Export(ctx context.Context, req *pluginv1.ExportRequest) (*pluginv1.DiskInfo, error) {
	return handle(s.impl.Export(ctx, req))
}

func (s *diskServer) Validate(ctx context.Context, req *pluginv1.ValidateRequest) (*pluginv1.ValidateResponse, error) {
	return handle(s.impl.Validate(ctx, req))
}

func (s *diskServer) Import(ctx context.Context, req *pluginv1.ImportRequest) (*pluginv1.DiskInfo, error) {
	return handle(s.impl.Import(ctx, req))
}

func (s *diskServer) RemoveDisk(ctx context.Context, req *pluginv1.DiskRequest) (*pluginv1.RemoveDiskResponse, error) {
	return handle(&pluginv1.RemoveDiskResponse{}, s.impl.RemoveDisk(ctx, req.GetDiskId()))
}

func (s *diskServer) ListDisks(ctx context.Context, _ *pluginv1.ListDisksRequest) (*pluginv1.ListDisksResponse, error) {
	disks, err := s.impl.ListDisks(ctx)
	return handle(&pluginv1.ListDisksResponse{Disks: disks}, err)
}

type snapshotPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	impl SnapshotBackend
}

func (p *snapshotPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pluginv1.RegisterSnapshotBackendServer(s, &snapshotServer{baseServer: baseServer{p.impl}, impl: p.impl})
	return nil
}

func (p *snapshotPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return NewSnapshotBackendClient(conn), nil
}

// NewSnapshotBackendClient returns a SnapshotBackend that calls a plugin
// over conn.
func NewSnapshotBackendClient(conn grpc.ClientConnInterface) SnapshotBackend {
	c := pluginv1.NewSnapshotBackendClient(conn)
	return &snapshotClient{baseClient: baseClient{c}, c: c}
}

type snapshotClient struct {
	baseClient
	c pluginv1.SnapshotBackendClient
}

func (s *snapshotClient) CreateSnapshot(ctx context.Context, diskID, name string) (*pluginv1.Snapshot, error) {
	return call(ctx, s.c.CreateSnapshot, &pluginv1.SnapshotRequest{DiskId: diskID, Name: name})
}

func (s *snapshotClient) ListSnapshots(ctx context.Context, diskID string) ([]*pluginv1.Snapshot, error) {
	resp, err := call(ctx, s.c.ListSnapshots, &pluginv1.DiskRequest{DiskId: diskID})
	return resp.GetSnapshots(), err
}

func (s *snapshotClient) RestoreSnapshot(ctx context.Context, diskID, name string) (*pluginv1.Snapshot, error) {
	return call(ctx, s.c.RestoreSnapshot, &pluginv1.SnapshotRequest{DiskId: diskID, Name: name})
}

func (s *snapshotClient) RemoveSnapshot(ctx context.Context, diskID, name string) error {
	_, err := call(ctx, s.c.RemoveSnapshot, &pluginv1.SnapshotRequest{DiskId: diskID, Name: name})
	return err
}

func (s *snapshotClient) Clone(ctx context.Context, req *pluginv1.CloneRequest) (*pluginv1.DiskInfo, error) {
	return call(ctx, s.c.Clone, req)
}

type snapshotServer struct {
	pluginv1.UnimplementedSnapshotBackendServer
	baseServer
	impl SnapshotBackend
}

func (s *snapshotServer) Info(ctx context.Context, req *pluginv1.InfoRequest) (*pluginv1.InfoResponse, error) {
	return s.baseServer.Info(ctx, req)
}

func (s *snapshotServer) Configure(ctx context.Context, req *pluginv1.ConfigureRequest) (*pluginv1.ConfigureResponse, error) {
	return s.baseServer.Configure(ctx, req)
}

func (s *snapshotServer) CreateSnapshot(ctx context.Context, req *pluginv1.SnapshotRequest) (*pluginv1.Snapshot, error) {
	return handle(s.impl.CreateSnapshot(ctx, req.GetDiskId(), req.GetName()))
}

func (s *snapshotServer) ListSnapshots(ctx context.Context, req *pluginv1.DiskRequest) (*pluginv1.ListSnapshotsResponse, error) {
	snaps, err := s.impl.ListSnapshots(ctx, req.GetDiskId())
	return handle(&pluginv1.ListSnapshotsResponse{Snapshots: snaps}, err)
}

func (s *snapshotServer) RestoreSnapshot(ctx context.Context, req *pluginv1.SnapshotRequest) (*pluginv1.Snapshot, error) {
	return handle(s.impl.RestoreSnapshot(ctx, req.GetDiskId(), req.GetName()))
}

func (s *snapshotServer) RemoveSnapshot(ctx context.Context, req *pluginv1.SnapshotRequest) (*pluginv1.RemoveSnapshotResponse, error) {
	return handle(&pluginv1.RemoveSnapshotResponse{}, s.impl.RemoveSnapshot(ctx, req.GetDiskId(), req.GetName()))
}

func (s *snapshotServer) Clone(ctx context.Context, req *pluginv1.CloneRequest) (*pluginv1.DiskInfo, error) {
	return handle(s.impl.Clone(ctx, req))
}
