package api

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/boxctl/boxctl/core"
)

// Error codes of the API's error bodies. They are stable: clients branch on
// them.
const (
	CodeNotFound         = "not_found"
	CodeAlreadyExists    = "already_exists"
	CodeInvalidState     = "invalid_state"
	CodeInvalidArgument  = "invalid_argument"
	CodeUnsupported      = "unsupported"
	CodePermissionDenied = "permission_denied"
	CodeShutDown         = "shut_down"
	CodeAmbiguous        = "ambiguous"
	CodeUnauthorized     = "unauthorized"
	CodeTooLarge         = "too_large"
	CodeTooManyRequests  = "too_many_requests"
	CodeInternal         = "internal"
)

// ErrorBody is every error response: {"error": {"code": ..., "message": ...}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is an error's code and human-readable message.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// apiError is an error the server makes itself with a code of its own
// (a bad request body, an oversized upload).
type apiError struct {
	code string
	msg  string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(msg string) error { return &apiError{code: CodeInvalidArgument, msg: msg} }

// errorCodes maps core's sentinels to codes and HTTP statuses; the first
// match wins, so the more specific sentinels come first.
var errorCodes = []struct {
	err    error
	code   string
	status int
}{
	{core.ErrNotFound, CodeNotFound, http.StatusNotFound},
	{core.ErrAlreadyExists, CodeAlreadyExists, http.StatusConflict},
	{core.ErrAmbiguous, CodeAmbiguous, http.StatusConflict},
	{core.ErrInvalidState, CodeInvalidState, http.StatusConflict},
	{core.ErrInvalidArgument, CodeInvalidArgument, http.StatusBadRequest},
	{core.ErrUnsupported, CodeUnsupported, http.StatusNotImplemented},
	{core.ErrPermission, CodePermissionDenied, http.StatusForbidden},
	{core.ErrShutDown, CodeShutDown, http.StatusServiceUnavailable},
}

// StatusOf is the HTTP status an error code is sent with.
func StatusOf(code string) int {
	switch code {
	case CodeNotFound:
		return http.StatusNotFound
	case CodeAlreadyExists, CodeInvalidState, CodeAmbiguous:
		return http.StatusConflict
	case CodeInvalidArgument:
		return http.StatusBadRequest
	case CodeUnsupported:
		return http.StatusNotImplemented
	case CodePermissionDenied:
		return http.StatusForbidden
	case CodeShutDown:
		return http.StatusServiceUnavailable
	case CodeUnauthorized:
		return http.StatusUnauthorized
	case CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case CodeTooManyRequests:
		return http.StatusTooManyRequests
	}
	return http.StatusInternalServerError
}

// classify turns an error into its code.
func classify(err error) string {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.code
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return CodeTooLarge
	}
	for _, c := range errorCodes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return CodeInternal
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	code := classify(err)
	writeJSON(w, StatusOf(code), ErrorBody{Error: ErrorDetail{Code: code, Message: err.Error()}})
}
