package api

import (
	"time"

	"github.com/boxctl/boxctl/core/model"
)

// CreateBoxRequest is POST /v1/boxes. Its fields mirror the flags of
// `boxctl create`; sizes are strings as the CLI takes them ("512MiB"),
// ports and volumes use the -p and -v syntax. Zero values mean the
// default, as on the CLI.
type CreateBoxRequest struct {
	Image string `json:"image"`
	Name  string `json:"name,omitempty"`
	// Cmd overrides the image's cmd; Entrypoint (when present, even
	// empty) the image's entrypoint, which also drops the image's cmd.
	Cmd               []string          `json:"cmd,omitempty"`
	Entrypoint        *[]string         `json:"entrypoint,omitempty"`
	Env               []string          `json:"env,omitempty"`
	Workdir           string            `json:"workdir,omitempty"`
	User              string            `json:"user,omitempty"`
	CPUs              int               `json:"cpus,omitempty"`
	Memory            string            `json:"memory,omitempty"`
	DiskSize          string            `json:"disk_size,omitempty"`
	Ports             []string          `json:"ports,omitempty"`
	Volumes           []string          `json:"volumes,omitempty"`
	Network           string            `json:"network,omitempty"`
	AllowNet          []string          `json:"allow_net,omitempty"`
	AllowHostLoopback bool              `json:"allow_host_loopback,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
	AutoRemove        bool              `json:"auto_remove,omitempty"`
	Platform          string            `json:"platform,omitempty"`
	Health            *HealthCheck      `json:"health,omitempty"`
	// Start boots the box (detached) once it is created.
	Start bool `json:"start,omitempty"`
	// Pull fetches the image first when it is not cached (as `boxctl
	// run` does); without it a missing image is pulled at first start.
	Pull bool `json:"pull,omitempty"`
}

// HealthCheck is a box's health check; Cmd runs through /bin/sh -c and
// durations are Go durations ("30s").
type HealthCheck struct {
	Cmd         string `json:"cmd"`
	Interval    string `json:"interval,omitempty"`
	Timeout     string `json:"timeout,omitempty"`
	Retries     int    `json:"retries,omitempty"`
	StartPeriod string `json:"start_period,omitempty"`
}

// Box is a box as the API shows it: the runtime's record.
type Box = model.Box

// BoxList is GET /v1/boxes.
type BoxList struct {
	Boxes []*Box `json:"boxes"`
}

// StartRequest is POST /v1/boxes/{id}/start.
type StartRequest struct {
	// Cold boots the kernel even when a boot template exists.
	Cold bool `json:"cold,omitempty"`
}

// StopRequest is POST /v1/boxes/{id}/stop.
type StopRequest struct {
	// TimeoutSeconds to wait for a clean power-off (default 10; 0 forces
	// the VM off at once).
	TimeoutSeconds *int `json:"timeout_seconds,omitempty"`
}

// ExecRequest is POST /v1/boxes/{id}/exec. A WebSocket exec takes the same
// settings as query parameters (docs/api.md).
type ExecRequest struct {
	Cmd     []string `json:"cmd"`
	Env     []string `json:"env,omitempty"`
	Workdir string   `json:"workdir,omitempty"`
	User    string   `json:"user,omitempty"`
	// Stdin is the command's whole input (one-shot exec only).
	Stdin string `json:"stdin,omitempty"`
	// TimeoutSeconds kills the command after this long; 0 means none
	// (one-shot execs are still bounded by the server's exec limit).
	TimeoutSeconds float64 `json:"timeout_seconds,omitempty"`
	// TTY runs the command on a terminal of Cols x Rows (WebSocket only:
	// a one-shot exec with tty is refused).
	TTY  bool   `json:"tty,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
	Rows uint16 `json:"rows,omitempty"`
	// Detach runs the command in the background (one-shot only): the
	// response carries its PID and no output.
	Detach bool `json:"detach,omitempty"`
}

// ExecResponse is a finished one-shot exec.
type ExecResponse struct {
	ExitCode   int     `json:"exit_code"`
	Signal     int     `json:"signal,omitempty"`
	TimedOut   bool    `json:"timed_out,omitempty"`
	DurationMS float64 `json:"duration_ms"`
	PID        int     `json:"pid,omitempty"`
	Stdout     string  `json:"stdout"`
	Stderr     string  `json:"stderr"`
	// Truncated says output beyond the server's limit was dropped.
	Truncated bool `json:"truncated,omitempty"`
}

// Control is a JSON text frame on an exec WebSocket.
type Control struct {
	// Type is "resize", "signal" or "close_stdin" from the client;
	// "exit" or "error" from the server.
	Type     string       `json:"type"`
	Cols     uint16       `json:"cols,omitempty"`
	Rows     uint16       `json:"rows,omitempty"`
	Signal   int          `json:"signal,omitempty"`
	ExitCode *int         `json:"exit_code,omitempty"`
	TimedOut bool         `json:"timed_out,omitempty"`
	Error    *ErrorDetail `json:"error,omitempty"`
}

// Stream prefixes of binary frames on an exec WebSocket.
const (
	StreamStdin  byte = 0
	StreamStdout byte = 1
	StreamStderr byte = 2
)

// FileInfo is one entry of GET /v1/boxes/{id}/files/stat and /files/list.
type FileInfo struct {
	Name    string    `json:"name"`
	Size    int64     `json:"size"`
	Mode    string    `json:"mode"`
	Type    string    `json:"type"` // "file", "dir", "symlink", "other"
	ModTime time.Time `json:"mod_time"`
	Link    string    `json:"link,omitempty"`
}

// FileList is GET /v1/boxes/{id}/files/list.
type FileList struct {
	Path    string     `json:"path"`
	Entries []FileInfo `json:"entries"`
}

// Image is a cached image.
type Image struct {
	Digest     string    `json:"digest"`
	References []string  `json:"references"`
	Platform   string    `json:"platform"`
	Size       uint64    `json:"size"`
	CreatedAt  time.Time `json:"created_at"`
	PulledAt   time.Time `json:"pulled_at"`
	UsedBy     []string  `json:"used_by"`
}

// ImageList is GET /v1/images.
type ImageList struct {
	Images []Image `json:"images"`
}

// PullRequest is POST /v1/images/pull.
type PullRequest struct {
	Ref      string `json:"ref"`
	Platform string `json:"platform,omitempty"`
}

// PullEvent is one line of the NDJSON stream of POST /v1/images/pull:
// progress ("layer", "status"), then one "done" or "error" line.
type PullEvent struct {
	Type   string       `json:"type"`
	Status string       `json:"status,omitempty"`
	Layer  *LayerEvent  `json:"layer,omitempty"`
	Image  *Image       `json:"image,omitempty"`
	Error  *ErrorDetail `json:"error,omitempty"`
}

// LayerEvent is a layer's progress in a pull.
type LayerEvent struct {
	Digest string `json:"digest"`
	Total  uint64 `json:"total"`
	Done   uint64 `json:"done"`
	State  string `json:"state"`
}

// RemovedImages is DELETE /v1/images.
type RemovedImages struct {
	Images    []string `json:"images"`
	Reclaimed uint64   `json:"reclaimed"`
}

// NameRequest names a snapshot or checkpoint to create.
type NameRequest struct {
	Name string `json:"name"`
}

// RestoreRequest is POST .../snapshots/{name}/restore and
// .../checkpoints/{name}/restore.
type RestoreRequest struct {
	Force          bool `json:"force,omitempty"`
	TimeoutSeconds *int `json:"timeout_seconds,omitempty"`
}

// CloneRequest is POST /v1/boxes/{id}/clone.
type CloneRequest struct {
	Name     string `json:"name,omitempty"`
	Count    int    `json:"count,omitempty"`
	Snapshot string `json:"snapshot,omitempty"`
	Start    bool   `json:"start,omitempty"`
}

// ForkRequest is POST /v1/boxes/{id}/fork.
type ForkRequest struct {
	Name  string `json:"name,omitempty"`
	Count int    `json:"count,omitempty"`
}

// Health is GET /v1/health.
type Health struct {
	Status string `json:"status"`
	Home   string `json:"home"`
}
