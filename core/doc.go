// Package core is boxctl's runtime: the API that the CLI uses and that Go
// programs embed. A Runtime manages the boxes of one home directory; many
// Runtimes (in many processes) may share a home at once.
//
//	rt, err := core.Open(ctx, core.WithHome(dir))
//	defer rt.Close()
//	box, err := rt.Create(ctx, core.BoxOptions{Name: "web", Config: model.BoxConfig{Image: "alpine"}})
//	err = box.Start(ctx)
//
// Boxes started through the API are tied to the process that started them
// (the box's monitor stops them when that process ends, even after kill -9)
// unless they are detached. Close and Shutdown stop this process's
// non-detached boxes.
package core

import "github.com/boxctl/boxctl/core/model"

// Errors the runtime returns; match them with errors.Is.
var (
	ErrNotFound        = model.ErrNotFound
	ErrAlreadyExists   = model.ErrAlreadyExists
	ErrInvalidState    = model.ErrInvalidState
	ErrShutDown        = model.ErrShutDown
	ErrAmbiguous       = model.ErrAmbiguous
	ErrInvalidArgument = model.ErrInvalidArgument
	ErrPermission      = model.ErrPermission
	ErrUnsupported     = model.ErrUnsupported
)
