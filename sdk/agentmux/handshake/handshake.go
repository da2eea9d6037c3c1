// Package handshake owns the resynchronisation that precedes every yamux session on the
// virtio-serial agent port.
//
// A virtio-serial port is one byte pipe that outlives both of its users: the host side
// (agentmux) may reconnect, and the guest may reboot, while the other side still holds bytes
// of an old session. Before yamux starts, the host sends a line with a fresh nonce and the
// guest answers with the same nonce; each side discards whatever else it reads until then,
// so stale bytes never reach a new yamux session. The guest also announces itself with a
// line when it (re)opens the port: a host that still runs a yamux session over the old
// guest sees garbage, drops that session and handshakes again.
//
// Lines (all ASCII, '\n'-terminated):
//
//	host → guest: "BOXCTL-HELLO <nonce>"   (repeated until answered: the guest may not be up)
//	guest → host: "BOXCTL-READY <nonce>"   (once per nonce)
//	host → guest: "BOXCTL-START <nonce>"   (after the READY; yamux follows)
//	guest → host: "BOXCTL-AGENT-UP"        (when the guest opens the port)
//
// The START line lets the guest skip the repeated HELLOs still queued in the pipe: yamux
// begins right after it, on both sides.
package handshake

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"
)

const (
	helloPrefix = "BOXCTL-HELLO "
	readyPrefix = "BOXCTL-READY "
	startPrefix = "BOXCTL-START "
	// AgentUp is the line the guest writes when it opens the port.
	AgentUp     = "\nBOXCTL-AGENT-UP\n"
	agentUpLine = "BOXCTL-AGENT-UP"
	// maxLine bounds how much garbage is buffered while looking for a line.
	maxLine = 256
)

// ErrClosed is returned when the pipe ends before the handshake completes.
var ErrClosed = errors.New("handshake: pipe closed")

// Conn is what the handshake needs: a byte pipe whose reads can be interrupted by a
// deadline (net.Conn and *os.File on pollable descriptors both qualify).
type Conn interface {
	io.ReadWriter
	SetReadDeadline(time.Time) error
}

// Host performs the host side: it sends the hello line every resend interval until the guest
// answers with the same nonce, discarding anything else it reads, then sends the start line.
// It returns when the session can start, or with ctx's error. Nothing after the answer line
// is consumed.
func Host(ctx context.Context, c Conn, resend time.Duration) error {
	var raw [8]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return fmt.Errorf("handshake: nonce: %w", err)
	}
	nonce := hex.EncodeToString(raw[:])
	hello := []byte("\n" + helloPrefix + nonce + "\n")
	want := readyPrefix + nonce

	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	defer c.SetReadDeadline(time.Time{})

	lr := lineReader{r: c}
	for {
		if _, err := c.Write(hello); err != nil {
			return fmt.Errorf("handshake: send hello: %w", err)
		}
		deadline := time.Now().Add(resend)
		for {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			c.SetReadDeadline(deadline)
			line, err := lr.next()
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if isTimeout(err) {
					break // resend
				}
				return err
			}
			if line == want {
				if _, err := io.WriteString(c, "\n"+startPrefix+nonce+"\n"); err != nil {
					return fmt.Errorf("handshake: send start: %w", err)
				}
				return nil
			}
			if line == agentUpLine {
				// The guest has just (re)opened the port and waits for a
				// hello; one sent before may have gone to its previous
				// session (a VM restored from a saved state resumes in
				// one). Answer at once rather than at the next resend.
				break
			}
		}
	}
}

// Guest performs the guest side: it answers hello lines (discarding anything else) until the
// host starts the session. It returns with ctx's error or when the pipe fails. Nothing after
// the start line is consumed.
func Guest(ctx context.Context, c Conn) error {
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	defer c.SetReadDeadline(time.Time{})
	lr := lineReader{r: c}
	current := ""
	for {
		line, err := lr.next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		if nonce, ok := strings.CutPrefix(line, helloPrefix); ok && nonce != "" && nonce != current {
			// Answer each nonce once: a second READY would reach the host's yamux.
			if _, err := io.WriteString(c, "\n"+readyPrefix+nonce+"\n"); err != nil {
				return fmt.Errorf("handshake: send ready: %w", err)
			}
			current = nonce
			continue
		}
		if nonce, ok := strings.CutPrefix(line, startPrefix); ok && current != "" && nonce == current {
			return nil
		}
	}
}

// lineReader reads one byte at a time so that it never consumes bytes past the line it
// returns (they belong to the yamux session that follows).
type lineReader struct {
	r   io.Reader
	buf bytes.Buffer
}

func (l *lineReader) next() (string, error) {
	var b [1]byte
	for {
		n, err := l.r.Read(b[:])
		if n == 1 {
			if b[0] == '\n' {
				line := l.buf.String()
				l.buf.Reset()
				return line, nil
			}
			if l.buf.Len() < maxLine {
				l.buf.WriteByte(b[0])
			}
			continue
		}
		if errors.Is(err, io.EOF) {
			return "", ErrClosed
		}
		if err != nil {
			return "", err
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return errors.Is(err, os.ErrDeadlineExceeded)
}
