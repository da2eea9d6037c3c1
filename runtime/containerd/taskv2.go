package containerd

import (
	"context"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/ttrpc"
)

// registerTaskV2 serves containerd.task.v2.Task, the task API of
// containerd 1.6, 1.7 and of 2.x talking to a shim that answered start
// with a plain address. Its messages are the v3 messages under another
// package name (the .proto files differ only there), so the v3 handlers
// decode and answer them unchanged.
func registerTaskV2(server *ttrpc.Server, s taskapi.TTRPCTaskService) {
	server.RegisterService("containerd.task.v2.Task", &ttrpc.ServiceDesc{
		Methods: map[string]ttrpc.Method{
			"State":      method(s.State),
			"Create":     method(s.Create),
			"Start":      method(s.Start),
			"Delete":     method(s.Delete),
			"Pids":       method(s.Pids),
			"Pause":      method(s.Pause),
			"Resume":     method(s.Resume),
			"Checkpoint": method(s.Checkpoint),
			"Kill":       method(s.Kill),
			"Exec":       method(s.Exec),
			"ResizePty":  method(s.ResizePty),
			"CloseIO":    method(s.CloseIO),
			"Update":     method(s.Update),
			"Wait":       method(s.Wait),
			"Stats":      method(s.Stats),
			"Connect":    method(s.Connect),
			"Shutdown":   method(s.Shutdown),
		},
	})
}

func method[Req any, Resp any](f func(context.Context, *Req) (Resp, error)) ttrpc.Method {
	return func(ctx context.Context, unmarshal func(any) error) (any, error) {
		var req Req
		if err := unmarshal(&req); err != nil {
			return nil, err
		}
		return f(ctx, &req)
	}
}
