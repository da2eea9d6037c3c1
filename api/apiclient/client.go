// Package apiclient is a small Go client of boxctl's HTTP API (package
// api), over the server's unix socket or TCP. Go programs usually embed
// package core instead; this client serves tests, benchmarks and programs
// that must go through a server.
package apiclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/coder/websocket"

	"github.com/boxctl/boxctl/api"
)

// Client talks to one server.
type Client struct {
	base  string // http://host or http://boxctl for a unix socket
	token string
	hc    *http.Client
}

// Error is an error answer of the server.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("%s (%d %s)", e.Message, e.Status, e.Code) }

// Code returns the API error code of err ("" when it is not an API error).
func Code(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// Unix returns a client of the server listening on a unix socket.
func Unix(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConnsPerHost: 64,
	}
	return &Client{base: "http://boxctl", hc: &http.Client{Transport: tr}}
}

// TCP returns a client of the server at base ("http://127.0.0.1:7070")
// sending token.
func TCP(base, token string) *Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	return &Client{base: strings.TrimSuffix(base, "/"), token: token, hc: &http.Client{Transport: tr}}
}

// Close drops idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Do sends a request with a JSON (or raw, for an io.Reader) body and decodes
// a JSON answer into out (nil: discarded). It returns the HTTP status.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) (int, error) {
	resp, err := c.send(ctx, method, path, body, "")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if out != nil && resp.StatusCode != http.StatusNoContent {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: decode the answer: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

// Raw sends a request and returns the successful response for the caller
// to read and close; contentType is used for an io.Reader body.
func (c *Client) Raw(ctx context.Context, method, path string, body any, contentType string) (*http.Response, error) {
	return c.send(ctx, method, path, body, contentType)
}

func (c *Client) send(ctx context.Context, method, path string, body any, contentType string) (*http.Response, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case io.Reader:
		rd = b
		if contentType == "" {
			contentType = "application/octet-stream"
		}
	default:
		data, err := json.Marshal(b)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(data)
		contentType = "application/json"
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 400 {
		defer resp.Body.Close()
		var eb api.ErrorBody
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(data, &eb) != nil || eb.Error.Code == "" {
			return nil, &Error{Status: resp.StatusCode, Code: "", Message: strings.TrimSpace(string(data))}
		}
		return nil, &Error{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
	}
	return resp, nil
}

// CreateBox creates a box.
func (c *Client) CreateBox(ctx context.Context, req api.CreateBoxRequest) (*api.Box, error) {
	var b api.Box
	_, err := c.Do(ctx, "POST", "/v1/boxes", req, &b)
	return &b, err
}

// Box gets a box.
func (c *Client) Box(ctx context.Context, ref string) (*api.Box, error) {
	var b api.Box
	_, err := c.Do(ctx, "GET", "/v1/boxes/"+url.PathEscape(ref), nil, &b)
	return &b, err
}

// Boxes lists the boxes.
func (c *Client) Boxes(ctx context.Context) ([]*api.Box, error) {
	var l api.BoxList
	_, err := c.Do(ctx, "GET", "/v1/boxes", nil, &l)
	return l.Boxes, err
}

// RemoveBox removes a box.
func (c *Client) RemoveBox(ctx context.Context, ref string, force bool) error {
	_, err := c.Do(ctx, "DELETE", fmt.Sprintf("/v1/boxes/%s?force=%t", url.PathEscape(ref), force), nil, nil)
	return err
}

// Exec runs a command and collects its output.
func (c *Client) Exec(ctx context.Context, ref string, req api.ExecRequest) (api.ExecResponse, error) {
	var r api.ExecResponse
	_, err := c.Do(ctx, "POST", "/v1/boxes/"+url.PathEscape(ref)+"/exec", req, &r)
	return r, err
}

// Pull pulls an image, calling progress for each event, and returns the
// final event's image.
func (c *Client) Pull(ctx context.Context, ref string, progress func(api.PullEvent)) (*api.Image, error) {
	resp, err := c.send(ctx, "POST", "/v1/images/pull", api.PullRequest{Ref: ref}, "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev api.PullEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return nil, fmt.Errorf("pull %s: bad event %q: %w", ref, sc.Text(), err)
		}
		if progress != nil {
			progress(ev)
		}
		switch ev.Type {
		case "done":
			return ev.Image, nil
		case "error":
			return nil, &Error{Status: api.StatusOf(ev.Error.Code), Code: ev.Error.Code, Message: ev.Error.Message}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("pull %s: the stream ended without a result", ref)
}

// Stream is a streaming exec.
type Stream struct {
	conn    *websocket.Conn
	mu      sync.Mutex
	exit    chan api.Control
	readErr error
}

// ExecStream starts a streaming exec. query holds cmd (repeated), tty,
// stdin, cols, rows, ... as docs/api.md lists them. Output frames go to
// stdout and stderr as they arrive.
func (c *Client) ExecStream(ctx context.Context, ref string, query url.Values, stdout, stderr io.Writer) (*Stream, error) {
	u := strings.Replace(c.base, "http", "ws", 1) + "/v1/boxes/" + url.PathEscape(ref) + "/exec/ws?" + query.Encode()
	h := http.Header{}
	if c.token != "" {
		h.Set("Authorization", "Bearer "+c.token)
	}
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: c.hc, HTTPHeader: h})
	if err != nil {
		if resp != nil && resp.StatusCode >= 400 {
			var eb api.ErrorBody
			if resp.Body != nil {
				_ = json.NewDecoder(resp.Body).Decode(&eb)
			}
			return nil, &Error{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
		}
		return nil, err
	}
	conn.SetReadLimit(8 << 20)
	s := &Stream{conn: conn, exit: make(chan api.Control, 1)}
	go func() {
		defer close(s.exit)
		for {
			typ, data, err := conn.Read(context.Background())
			if err != nil {
				s.mu.Lock()
				s.readErr = err
				s.mu.Unlock()
				return
			}
			if typ == websocket.MessageBinary && len(data) > 0 {
				w := stdout
				if data[0] == api.StreamStderr {
					w = stderr
				}
				if w != nil {
					_, _ = w.Write(data[1:])
				}
				continue
			}
			var ctl api.Control
			if json.Unmarshal(data, &ctl) == nil && (ctl.Type == "exit" || ctl.Type == "error") {
				s.exit <- ctl
			}
		}
	}()
	return s, nil
}

// Stdin sends input to the command.
func (s *Stream) Stdin(ctx context.Context, p []byte) error {
	return s.conn.Write(ctx, websocket.MessageBinary, append([]byte{api.StreamStdin}, p...))
}

// Control sends a control frame (resize, signal, close_stdin).
func (s *Stream) Control(ctx context.Context, c api.Control) error {
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return s.conn.Write(ctx, websocket.MessageText, data)
}

// Wait returns the command's exit code once it has ended.
func (s *Stream) Wait(ctx context.Context) (int, error) {
	select {
	case ctl, ok := <-s.exit:
		if !ok {
			s.mu.Lock()
			defer s.mu.Unlock()
			return 0, fmt.Errorf("exec stream ended without an exit frame: %w", s.readErr)
		}
		if ctl.Type == "error" {
			return 0, &Error{Status: api.StatusOf(ctl.Error.Code), Code: ctl.Error.Code, Message: ctl.Error.Message}
		}
		return *ctl.ExitCode, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Abandon drops the connection without a close handshake, as a client
// that vanishes does.
func (s *Stream) Abandon() { _ = s.conn.CloseNow() }

// Close closes the stream.
func (s *Stream) Close() error { return s.conn.Close(websocket.StatusNormalClosure, "") }
