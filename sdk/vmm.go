package sdk

import (
	"context"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	pluginv1 "github.com/boxctl/boxctl/sdk/proto/v1"
)

// VMM turns a VM spec into a launch plan and controls running VMs through
// the handle in that plan. Implementations are stateless; see vmm.proto for
// the call-order contract. Methods a plugin lacks return ErrUnsupported.
type VMM interface {
	Plugin
	Plan(ctx context.Context, spec *pluginv1.VMSpec) (*pluginv1.LaunchPlan, error)
	Stop(ctx context.Context, req *pluginv1.StopRequest) error
	Pause(ctx context.Context, req *pluginv1.ControlRequest) error
	Resume(ctx context.Context, req *pluginv1.ControlRequest) error
	Metrics(ctx context.Context, req *pluginv1.ControlRequest) (*pluginv1.MetricsResponse, error)
}

type vmmPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	impl VMM
}

func (p *vmmPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pluginv1.RegisterVMMServer(s, &vmmServer{baseServer: baseServer{p.impl}, impl: p.impl})
	return nil
}

func (p *vmmPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return NewVMMClient(conn), nil
}

// NewVMMClient returns a VMM that calls a plugin over conn.
func NewVMMClient(conn grpc.ClientConnInterface) VMM {
	c := pluginv1.NewVMMClient(conn)
	return &vmmClient{baseClient: baseClient{c}, c: c}
}

type vmmClient struct {
	baseClient
	c pluginv1.VMMClient
}

func (v *vmmClient) Plan(ctx context.Context, spec *pluginv1.VMSpec) (*pluginv1.LaunchPlan, error) {
	resp, err := call(ctx, v.c.Plan, &pluginv1.PlanRequest{Spec: spec})
	return resp.GetPlan(), err
}

func (v *vmmClient) Stop(ctx context.Context, req *pluginv1.StopRequest) error {
	_, err := call(ctx, v.c.Stop, req)
	return err
}

func (v *vmmClient) Pause(ctx context.Context, req *pluginv1.ControlRequest) error {
	_, err := call(ctx, v.c.Pause, req)
	return err
}

func (v *vmmClient) Resume(ctx context.Context, req *pluginv1.ControlRequest) error {
	_, err := call(ctx, v.c.Resume, req)
	return err
}

func (v *vmmClient) Metrics(ctx context.Context, req *pluginv1.ControlRequest) (*pluginv1.MetricsResponse, error) {
	return call(ctx, v.c.Metrics, req)
}

type vmmServer struct {
	pluginv1.UnimplementedVMMServer
	baseServer
	impl VMM
}

func (s *vmmServer) Info(ctx context.Context, req *pluginv1.InfoRequest) (*pluginv1.InfoResponse, error) {
	return s.baseServer.Info(ctx, req)
}

func (s *vmmServer) Configure(ctx context.Context, req *pluginv1.ConfigureRequest) (*pluginv1.ConfigureResponse, error) {
	return s.baseServer.Configure(ctx, req)
}

func (s *vmmServer) Plan(ctx context.Context, req *pluginv1.PlanRequest) (*pluginv1.PlanResponse, error) {
	plan, err := s.impl.Plan(ctx, req.GetSpec())
	return handle(&pluginv1.PlanResponse{Plan: plan}, err)
}

func (s *vmmServer) Stop(ctx context.Context, req *pluginv1.StopRequest) (*pluginv1.StopResponse, error) {
	return handle(&pluginv1.StopResponse{}, s.impl.Stop(ctx, req))
}

func (s *vmmServer) Pause(ctx context.Context, req *pluginv1.ControlRequest) (*pluginv1.ControlResponse, error) {
	return handle(&pluginv1.ControlResponse{}, s.impl.Pause(ctx, req))
}

func (s *vmmServer) Resume(ctx context.Context, req *pluginv1.ControlRequest) (*pluginv1.ControlResponse, error) {
	return handle(&pluginv1.ControlResponse{}, s.impl.Resume(ctx, req))
}

func (s *vmmServer) Metrics(ctx context.Context, req *pluginv1.ControlRequest) (*pluginv1.MetricsResponse, error) {
	return handle(s.impl.Metrics(ctx, req))
}
