// Command boxctl-plugin-badproto is a TEST DOUBLE: a plugin that speaks a
// plugin protocol version boxctl does not (99), for the version negotiation
// test. It serves nothing useful.
package main

import (
	"context"

	"github.com/boxctl/boxctl/sdk"
	pluginv1 "github.com/boxctl/boxctl/sdk/proto/v1"
)

type futureVMM struct{}

func (futureVMM) Info(context.Context) (*pluginv1.InfoResponse, error) {
	return &pluginv1.InfoResponse{Name: "badproto", Version: "99.0.0"}, nil
}
func (futureVMM) Configure(context.Context, *sdk.Config) error { return nil }
func (futureVMM) Plan(context.Context, *pluginv1.VMSpec) (*pluginv1.LaunchPlan, error) {
	return nil, sdk.ErrUnsupported
}
func (futureVMM) Stop(context.Context, *pluginv1.StopRequest) error      { return sdk.ErrUnsupported }
func (futureVMM) Pause(context.Context, *pluginv1.ControlRequest) error  { return sdk.ErrUnsupported }
func (futureVMM) Resume(context.Context, *pluginv1.ControlRequest) error { return sdk.ErrUnsupported }
func (futureVMM) Metrics(context.Context, *pluginv1.ControlRequest) (*pluginv1.MetricsResponse, error) {
	return nil, sdk.ErrUnsupported
}

func main() {
	sdk.Serve(sdk.ServeConfig{VMM: futureVMM{}, ProtocolVersion: 99})
}
