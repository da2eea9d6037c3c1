package sdk

import (
	"context"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	pluginv1 "github.com/boxctl/boxctl/sdk/proto/v1"
)

// DiskBackend stores the boxes' writable disks. See storage.proto for the
// contract (disk IDs, crash safety, concurrency).
type DiskBackend interface {
	Plugin
	// CreateDisk creates a copy-on-write disk of req.Size bytes over the
	// blank base filesystem for that size. ErrAlreadyExists if the ID is
	// taken.
	CreateDisk(ctx context.Context, req CreateDiskRequest) (Disk, error)
	// GetDisk describes a disk; ErrNotFound if there is none.
	GetDisk(ctx context.Context, diskID string) (Disk, error)
	// RemoveDisk removes a disk and its snapshots; removing a missing disk
	// succeeds. ErrInvalidState while clones depend on it.
	RemoveDisk(ctx context.Context, diskID string) error
	// ListDisks lists every disk of the store.
	ListDisks(ctx context.Context) ([]Disk, error)
}

// DiskInspector is an optional DiskBackend feature: describe a disk file
// that is not (yet) in the store.
type DiskInspector interface {
	FileInfo(ctx context.Context, path string) (Disk, error)
}

// Resizer is an optional DiskBackend feature: grow a disk.
type Resizer interface {
	Resize(ctx context.Context, diskID string, size uint64) (Disk, error)
}

// Exporter is an optional DiskBackend feature: flatten a disk (and its
// backing chain) into one standalone file. A plugin that declares
// Capabilities.SnapshotTransfer also exports snapshots
// (ExportRequest.Snapshot).
type Exporter interface {
	Export(ctx context.Context, req ExportRequest) (Disk, error)
}

// Importer is an optional DiskBackend feature: check an untrusted disk file
// and adopt it into the store. A disk file may name any host file as its
// backing file: Validate refuses every backing reference. A plugin that
// declares Capabilities.SnapshotTransfer also imports a file as a snapshot
// of an existing disk (ImportRequest.Snapshot).
type Importer interface {
	Validate(ctx context.Context, path string, maxVirtualSize uint64) (Validation, error)
	Import(ctx context.Context, req ImportRequest) (Disk, error)
}

// SnapshotBackend keeps named point-in-time states of writable disks. See
// storage.proto for the contract.
type SnapshotBackend interface {
	Plugin
	CreateSnapshot(ctx context.Context, diskID, name string) (Snapshot, error)
	ListSnapshots(ctx context.Context, diskID string) ([]Snapshot, error)
	RestoreSnapshot(ctx context.Context, diskID, name string) (Snapshot, error)
	// RemoveSnapshot refuses (ErrInvalidState) while a clone depends on it.
	RemoveSnapshot(ctx context.Context, diskID, name string) error
}

// Cloner is an optional SnapshotBackend feature: a new disk with another
// disk's current content (or a snapshot's), in constant time where the
// plugin declares CloneO1. The sdk sets Capabilities.Clone for an
// implementation that has it, so the host knows before it calls.
type Cloner interface {
	Clone(ctx context.Context, req CloneRequest) (Disk, error)
}

// Disk describes a disk file of the store.
type Disk struct {
	ID string
	// Path is the file a VM opens.
	Path string
	// Format is "raw" or "qcow2".
	Format      string
	VirtualSize uint64
	// AllocatedSize is the bytes allocated on the host for this file alone.
	AllocatedSize uint64
	// BackingChain lists the files below Path, nearest first.
	BackingChain []BackingFile
}

// BackingFile is a file a disk's content is read through.
type BackingFile struct {
	Path        string
	Format      string
	VirtualSize uint64
}

// CreateDiskRequest asks for a new writable disk.
type CreateDiskRequest struct {
	ID   string
	Size uint64
	// Filesystem of the blank base: "ext4" (the default).
	Filesystem string
}

// ExportRequest flattens a disk into Dest ("qcow2", the default, or "raw"):
// its current state, or its snapshot Snapshot when set.
type ExportRequest struct {
	ID       string
	Dest     string
	Format   string
	Snapshot string
}

// ImportRequest adopts the untrusted file Source as disk ID; it is
// validated first. With Snapshot set, Source becomes a new snapshot of that
// name of the existing disk ID, taken at SnapshotCreatedAt (zero: now),
// and the disk's current state is unchanged. With Move, the caller hands
// Source over: the plugin may rename it into its store rather than copy
// it, and Source may be gone afterwards.
type ImportRequest struct {
	ID                string
	Source            string
	MaxVirtualSize    uint64
	Snapshot          string
	SnapshotCreatedAt time.Time
	Move              bool
}

// Validation is what Validate found. Problems is empty when the file is
// safe to import.
type Validation struct {
	Problems []string
	Disk     Disk
}

// Snapshot is a named state of a disk.
type Snapshot struct {
	DiskID      string
	Name        string
	CreatedAt   time.Time
	Size        uint64
	VirtualSize uint64
}

// CloneRequest asks for NewID as a copy of ID (of its snapshot Snapshot,
// when set).
type CloneRequest struct {
	ID       string
	NewID    string
	Snapshot string
}

type diskPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	impl DiskBackend
	life *lifecycles
}

func (p *diskPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pluginv1.RegisterDiskBackendServer(s, &diskServer{baseServer: newBaseServer(p.impl, p.life, diskCapabilities), impl: p.impl})
	return nil
}

func (p *diskPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return NewDiskBackendClient(conn), nil
}

func diskCapabilities(impl Plugin, c *Capabilities) {
	if _, ok := impl.(Resizer); ok {
		c.Resize = true
	}
	if _, ok := impl.(Exporter); ok {
		c.Export = true
	}
	if _, ok := impl.(Importer); ok {
		c.Import = true
	}
	if _, ok := impl.(SnapshotBackend); ok {
		c.Snapshots = true
	}
	if _, ok := impl.(Cloner); ok {
		c.Clone = true
	}
}

// DiskBackendClient is a DiskBackend served by a plugin process, with every
// optional method (ErrUnsupported where the plugin lacks it).
type DiskBackendClient interface {
	DiskBackend
	DiskInspector
	Resizer
	Exporter
	Importer
}

// NewDiskBackendClient returns a DiskBackend that calls a plugin over conn.
func NewDiskBackendClient(conn grpc.ClientConnInterface) DiskBackendClient {
	c := pluginv1.NewDiskBackendClient(conn)
	return &diskClient{baseClient: baseClient{c}, c: c}
}

type diskClient struct {
	baseClient
	c pluginv1.DiskBackendClient
}

func diskResult(d *pluginv1.DiskInfo, err error) (Disk, error) {
	if err != nil {
		return Disk{}, err
	}
	return diskFromProto(d), nil
}

func (d *diskClient) CreateDisk(ctx context.Context, req CreateDiskRequest) (Disk, error) {
	return diskResult(call(ctx, d.c.CreateDisk, &pluginv1.CreateDiskRequest{DiskId: req.ID, SizeBytes: req.Size, Filesystem: req.Filesystem}))
}

func (d *diskClient) GetDisk(ctx context.Context, diskID string) (Disk, error) {
	return diskResult(call(ctx, d.c.GetDisk, &pluginv1.DiskRequest{DiskId: diskID}))
}

func (d *diskClient) FileInfo(ctx context.Context, path string) (Disk, error) {
	return diskResult(call(ctx, d.c.FileInfo, &pluginv1.FileInfoRequest{Path: path}))
}

func (d *diskClient) Resize(ctx context.Context, diskID string, size uint64) (Disk, error) {
	return diskResult(call(ctx, d.c.Resize, &pluginv1.ResizeRequest{DiskId: diskID, SizeBytes: size}))
}

func (d *diskClient) Export(ctx context.Context, req ExportRequest) (Disk, error) {
	return diskResult(call(ctx, d.c.Export, &pluginv1.ExportRequest{DiskId: req.ID, Dest: req.Dest, Format: req.Format, Snapshot: req.Snapshot}))
}

func (d *diskClient) Validate(ctx context.Context, path string, maxVirtualSize uint64) (Validation, error) {
	resp, err := call(ctx, d.c.Validate, &pluginv1.ValidateRequest{Path: path, MaxVirtualSize: maxVirtualSize})
	if err != nil {
		return Validation{}, err
	}
	v := Validation{Problems: resp.GetProblems()}
	if resp.GetInfo() != nil {
		v.Disk = diskFromProto(resp.GetInfo())
	}
	return v, nil
}

func (d *diskClient) Import(ctx context.Context, req ImportRequest) (Disk, error) {
	return diskResult(call(ctx, d.c.Import, &pluginv1.ImportRequest{
		DiskId: req.ID, Source: req.Source, MaxVirtualSize: req.MaxVirtualSize,
		Snapshot: req.Snapshot, SnapshotCreatedAt: unixNano(req.SnapshotCreatedAt), Move: req.Move,
	}))
}

func (d *diskClient) RemoveDisk(ctx context.Context, diskID string) error {
	_, err := call(ctx, d.c.RemoveDisk, &pluginv1.DiskRequest{DiskId: diskID})
	return err
}

func (d *diskClient) ListDisks(ctx context.Context) ([]Disk, error) {
	resp, err := call(ctx, d.c.ListDisks, &pluginv1.ListDisksRequest{})
	if err != nil {
		return nil, err
	}
	out := make([]Disk, 0, len(resp.GetDisks()))
	for _, di := range resp.GetDisks() {
		out = append(out, diskFromProto(di))
	}
	return out, nil
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

func diskAnswer(d Disk, err error) (*pluginv1.DiskInfo, error) {
	return handle(diskToProto(d), err)
}

func (s *diskServer) CreateDisk(ctx context.Context, req *pluginv1.CreateDiskRequest) (*pluginv1.DiskInfo, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	return diskAnswer(s.impl.CreateDisk(ctx, CreateDiskRequest{ID: req.GetDiskId(), Size: req.GetSizeBytes(), Filesystem: req.GetFilesystem()}))
}

func (s *diskServer) GetDisk(ctx context.Context, req *pluginv1.DiskRequest) (*pluginv1.DiskInfo, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	return diskAnswer(s.impl.GetDisk(ctx, req.GetDiskId()))
}

func (s *diskServer) FileInfo(ctx context.Context, req *pluginv1.FileInfoRequest) (*pluginv1.DiskInfo, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	i, ok := s.impl.(DiskInspector)
	if !ok {
		return nil, unsupported("FileInfo")
	}
	return diskAnswer(i.FileInfo(ctx, req.GetPath()))
}

func (s *diskServer) Resize(ctx context.Context, req *pluginv1.ResizeRequest) (*pluginv1.DiskInfo, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	r, ok := s.impl.(Resizer)
	if !ok {
		return nil, unsupported("Resize")
	}
	return diskAnswer(r.Resize(ctx, req.GetDiskId(), req.GetSizeBytes()))
}

func (s *diskServer) Export(ctx context.Context, req *pluginv1.ExportRequest) (*pluginv1.DiskInfo, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	e, ok := s.impl.(Exporter)
	if !ok {
		return nil, unsupported("Export")
	}
	return diskAnswer(e.Export(ctx, ExportRequest{ID: req.GetDiskId(), Dest: req.GetDest(), Format: req.GetFormat(), Snapshot: req.GetSnapshot()}))
}

func (s *diskServer) Validate(ctx context.Context, req *pluginv1.ValidateRequest) (*pluginv1.ValidateResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	im, ok := s.impl.(Importer)
	if !ok {
		return nil, unsupported("Validate")
	}
	v, err := im.Validate(ctx, req.GetPath(), req.GetMaxVirtualSize())
	resp := &pluginv1.ValidateResponse{Problems: v.Problems}
	if v.Disk.Path != "" || v.Disk.Format != "" {
		resp.Info = diskToProto(v.Disk)
	}
	return handle(resp, err)
}

func (s *diskServer) Import(ctx context.Context, req *pluginv1.ImportRequest) (*pluginv1.DiskInfo, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	im, ok := s.impl.(Importer)
	if !ok {
		return nil, unsupported("Import")
	}
	return diskAnswer(im.Import(ctx, ImportRequest{
		ID: req.GetDiskId(), Source: req.GetSource(), MaxVirtualSize: req.GetMaxVirtualSize(),
		Snapshot: req.GetSnapshot(), SnapshotCreatedAt: fromUnixNano(req.GetSnapshotCreatedAt()), Move: req.GetMove(),
	}))
}

func (s *diskServer) RemoveDisk(ctx context.Context, req *pluginv1.DiskRequest) (*pluginv1.RemoveDiskResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	return handle(&pluginv1.RemoveDiskResponse{}, s.impl.RemoveDisk(ctx, req.GetDiskId()))
}

func (s *diskServer) ListDisks(ctx context.Context, _ *pluginv1.ListDisksRequest) (*pluginv1.ListDisksResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	disks, err := s.impl.ListDisks(ctx)
	resp := &pluginv1.ListDisksResponse{}
	for _, d := range disks {
		resp.Disks = append(resp.Disks, diskToProto(d))
	}
	return handle(resp, err)
}

func diskToProto(d Disk) *pluginv1.DiskInfo {
	out := &pluginv1.DiskInfo{DiskId: d.ID, Path: d.Path, Format: d.Format, VirtualSize: d.VirtualSize, AllocatedSize: d.AllocatedSize}
	for _, b := range d.BackingChain {
		out.BackingChain = append(out.BackingChain, &pluginv1.BackingFile{Path: b.Path, Format: b.Format, VirtualSize: b.VirtualSize})
	}
	return out
}

func diskFromProto(p *pluginv1.DiskInfo) Disk {
	d := Disk{ID: p.GetDiskId(), Path: p.GetPath(), Format: p.GetFormat(), VirtualSize: p.GetVirtualSize(), AllocatedSize: p.GetAllocatedSize()}
	for _, b := range p.GetBackingChain() {
		d.BackingChain = append(d.BackingChain, BackingFile{Path: b.GetPath(), Format: b.GetFormat(), VirtualSize: b.GetVirtualSize()})
	}
	return d
}

type snapshotPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	impl SnapshotBackend
	life *lifecycles
}

func (p *snapshotPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pluginv1.RegisterSnapshotBackendServer(s, &snapshotServer{baseServer: newBaseServer(p.impl, p.life, snapshotCapabilities), impl: p.impl})
	return nil
}

func (p *snapshotPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return NewSnapshotBackendClient(conn), nil
}

func snapshotCapabilities(impl Plugin, c *Capabilities) {
	c.Snapshots = true
	if _, ok := impl.(Cloner); ok {
		c.Clone = true
	}
}

// SnapshotBackendClient is a SnapshotBackend served by a plugin process,
// with every optional method (ErrUnsupported where the plugin lacks it).
type SnapshotBackendClient interface {
	SnapshotBackend
	Cloner
}

// NewSnapshotBackendClient returns a SnapshotBackend that calls a plugin
// over conn.
func NewSnapshotBackendClient(conn grpc.ClientConnInterface) SnapshotBackendClient {
	c := pluginv1.NewSnapshotBackendClient(conn)
	return &snapshotClient{baseClient: baseClient{c}, c: c}
}

type snapshotClient struct {
	baseClient
	c pluginv1.SnapshotBackendClient
}

func snapshotResult(p *pluginv1.Snapshot, err error) (Snapshot, error) {
	if err != nil {
		return Snapshot{}, err
	}
	return snapshotFromProto(p), nil
}

func (s *snapshotClient) CreateSnapshot(ctx context.Context, diskID, name string) (Snapshot, error) {
	return snapshotResult(call(ctx, s.c.CreateSnapshot, &pluginv1.SnapshotRequest{DiskId: diskID, Name: name}))
}

func (s *snapshotClient) ListSnapshots(ctx context.Context, diskID string) ([]Snapshot, error) {
	resp, err := call(ctx, s.c.ListSnapshots, &pluginv1.DiskRequest{DiskId: diskID})
	if err != nil {
		return nil, err
	}
	out := make([]Snapshot, 0, len(resp.GetSnapshots()))
	for _, sn := range resp.GetSnapshots() {
		out = append(out, snapshotFromProto(sn))
	}
	return out, nil
}

func (s *snapshotClient) RestoreSnapshot(ctx context.Context, diskID, name string) (Snapshot, error) {
	return snapshotResult(call(ctx, s.c.RestoreSnapshot, &pluginv1.SnapshotRequest{DiskId: diskID, Name: name}))
}

func (s *snapshotClient) RemoveSnapshot(ctx context.Context, diskID, name string) error {
	_, err := call(ctx, s.c.RemoveSnapshot, &pluginv1.SnapshotRequest{DiskId: diskID, Name: name})
	return err
}

func (s *snapshotClient) Clone(ctx context.Context, req CloneRequest) (Disk, error) {
	return diskResult(call(ctx, s.c.Clone, &pluginv1.CloneRequest{DiskId: req.ID, NewDiskId: req.NewID, Snapshot: req.Snapshot}))
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

func snapshotAnswer(sn Snapshot, err error) (*pluginv1.Snapshot, error) {
	return handle(snapshotToProto(sn), err)
}

func (s *snapshotServer) CreateSnapshot(ctx context.Context, req *pluginv1.SnapshotRequest) (*pluginv1.Snapshot, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	return snapshotAnswer(s.impl.CreateSnapshot(ctx, req.GetDiskId(), req.GetName()))
}

func (s *snapshotServer) ListSnapshots(ctx context.Context, req *pluginv1.DiskRequest) (*pluginv1.ListSnapshotsResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	snaps, err := s.impl.ListSnapshots(ctx, req.GetDiskId())
	resp := &pluginv1.ListSnapshotsResponse{}
	for _, sn := range snaps {
		resp.Snapshots = append(resp.Snapshots, snapshotToProto(sn))
	}
	return handle(resp, err)
}

func (s *snapshotServer) RestoreSnapshot(ctx context.Context, req *pluginv1.SnapshotRequest) (*pluginv1.Snapshot, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	return snapshotAnswer(s.impl.RestoreSnapshot(ctx, req.GetDiskId(), req.GetName()))
}

func (s *snapshotServer) RemoveSnapshot(ctx context.Context, req *pluginv1.SnapshotRequest) (*pluginv1.RemoveSnapshotResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	return handle(&pluginv1.RemoveSnapshotResponse{}, s.impl.RemoveSnapshot(ctx, req.GetDiskId(), req.GetName()))
}

func (s *snapshotServer) Clone(ctx context.Context, req *pluginv1.CloneRequest) (*pluginv1.DiskInfo, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	c, ok := s.impl.(Cloner)
	if !ok {
		return nil, unsupported("Clone")
	}
	return diskAnswer(c.Clone(ctx, CloneRequest{ID: req.GetDiskId(), NewID: req.GetNewDiskId(), Snapshot: req.GetSnapshot()}))
}

func snapshotToProto(s Snapshot) *pluginv1.Snapshot {
	out := &pluginv1.Snapshot{DiskId: s.DiskID, Name: s.Name, SizeBytes: s.Size, VirtualSize: s.VirtualSize}
	if !s.CreatedAt.IsZero() {
		out.CreatedAt = s.CreatedAt.UnixNano()
	}
	return out
}

func snapshotFromProto(p *pluginv1.Snapshot) Snapshot {
	s := Snapshot{DiskID: p.GetDiskId(), Name: p.GetName(), Size: p.GetSizeBytes(), VirtualSize: p.GetVirtualSize()}
	if p.GetCreatedAt() != 0 {
		s.CreatedAt = time.Unix(0, p.GetCreatedAt()).UTC()
	}
	return s
}
