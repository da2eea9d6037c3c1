package sdk

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The errors of boxctl: plugins return them, the core returns them (it
// re-exports these very values), and callers branch on them with
// errors.Is. They cross the process boundary as gRPC status codes and come
// back out of the client adapters as errors that match again, so
// errors.Is(err, ErrNotFound) holds for an image the image plugin does not
// have as much as for a box the core does not know.
//
// A plugin with finer-grained errors of its own makes each one match the
// kind it should cross the wire as (see Kind).
var (
	// ErrNotFound: the named object (box, disk, snapshot, image) does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: the object to create exists (a name in use).
	ErrAlreadyExists = errors.New("already exists")
	// ErrInvalidState: the object's state refuses the call (removing a
	// running box without force, a snapshot others depend on, a plugin not
	// configured yet).
	ErrInvalidState = errors.New("invalid state")
	// ErrInvalidArgument: the request is malformed or names something
	// unusable; retrying cannot help.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrUnsupported: the plugin (or the VMM, storage or image format) lacks
	// the capability.
	ErrUnsupported = errors.New("not supported")
	// ErrUnavailable: a remote the plugin needs cannot be reached.
	ErrUnavailable = errors.New("unavailable")
	// ErrUnauthenticated: credentials were refused or are missing.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrPermissionDenied: something is not permitted, or not safe to use
	// (a home another user can write).
	ErrPermissionDenied = errors.New("permission denied")
	// ErrShutDown: the runtime was shut down and refuses new work.
	ErrShutDown = errors.New("runtime is shut down")
	// ErrAmbiguous: an ID prefix matches more than one object.
	ErrAmbiguous = errors.New("ambiguous")
)

// Kind returns a sentinel error of its own (for errors.Is within a plugin)
// that also matches kind, one of the errors above, so it crosses the wire
// as that kind.
func Kind(kind error, text string) error { return &kindError{text: text, kind: kind} }

type kindError struct {
	text string
	kind error
}

func (e *kindError) Error() string { return e.text }
func (e *kindError) Unwrap() error { return e.kind }

// codeOfError maps errors to gRPC codes, first match wins: the more
// precise kinds come first (a layer in a format nobody reads is both
// malformed and unsupported; it is reported as unsupported).
var codeOfError = []struct {
	err  error
	code codes.Code
}{
	{ErrNotFound, codes.NotFound},
	{ErrAlreadyExists, codes.AlreadyExists},
	{ErrUnsupported, codes.Unimplemented},
	{ErrInvalidState, codes.FailedPrecondition},
	{ErrInvalidArgument, codes.InvalidArgument},
	{ErrUnavailable, codes.Unavailable},
	{ErrUnauthenticated, codes.Unauthenticated},
	{ErrPermissionDenied, codes.PermissionDenied},
	{ErrShutDown, codes.Aborted},
	{ErrAmbiguous, codes.InvalidArgument},
	{context.Canceled, codes.Canceled},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
}

// toStatus converts an implementation's error into a gRPC status error
// carrying the matching code and the full message.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	for _, m := range codeOfError {
		if errors.Is(err, m.err) {
			return status.Error(m.code, err.Error())
		}
	}
	return status.Error(codes.Unknown, err.Error())
}

// RemoteError is an error a plugin returned. Its message is the plugin's; it
// unwraps to the sentinel error matching its gRPC code (ErrNotFound ...), or
// to nothing for internal failures.
type RemoteError struct {
	Code    codes.Code
	Message string
	kind    error
}

func (e *RemoteError) Error() string { return e.Message }
func (e *RemoteError) Unwrap() error { return e.kind }

// fromStatus converts an error returned by a gRPC client call back into an
// error that matches the sdk's sentinel errors. Errors that are not gRPC
// statuses (a broken connection seen by the transport) pass unchanged.
func fromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	re := &RemoteError{Code: st.Code(), Message: st.Message()}
	for _, m := range codeOfError {
		if m.code == st.Code() {
			re.kind = m.err
			break
		}
	}
	return re
}
