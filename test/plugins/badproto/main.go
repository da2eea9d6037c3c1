// Command boxctl-plugin-badproto is a TEST DOUBLE: a plugin that speaks a
// plugin protocol version boxctl does not (99), for the version negotiation
// test. It serves nothing useful.
package main

import (
	"context"

	"github.com/boxctl/boxctl/sdk"
)

type futureVMM struct{}

func (futureVMM) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "badproto", Version: "99.0.0"}, nil
}
func (futureVMM) Configure(context.Context, *sdk.Config) error { return nil }
func (futureVMM) Plan(context.Context, sdk.VMSpec) (sdk.LaunchPlan, error) {
	return sdk.LaunchPlan{}, sdk.ErrUnsupported
}
func (futureVMM) Stop(context.Context, sdk.VM, bool) error { return sdk.ErrUnsupported }

func main() {
	sdk.Serve(sdk.ServeConfig{VMM: futureVMM{}, ProtocolVersion: 99})
}
