package core

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/boxctl/boxctl/core/model"
)

// runWatchInterval is how often a command in a box checks that the box is
// still there. A record read and a /proc stat twice a second are cheap next
// to an exec, and bound how long a command outlives its box.
const runWatchInterval = 500 * time.Millisecond

// runWatch is a command's view of the box it runs in: its context ends,
// with a cause saying why, when the box's current run can no longer serve
// the command — the box was removed, stopped or restarted, its VM process
// exited, or the hypervisor paused it because a disk request failed. Every
// exec, copy and agent call runs under one, so none can outlive the box it
// talks to.
type runWatch struct {
	ctx    context.Context
	parent context.Context
	cancel context.CancelCauseFunc
	done   chan struct{}
}

func (r *Runtime) watchRun(ctx context.Context, b *model.Box) *runWatch {
	wctx, cancel := context.WithCancelCause(ctx)
	w := &runWatch{ctx: wctx, parent: ctx, cancel: cancel, done: make(chan struct{})}
	go func() {
		t := time.NewTicker(runWatchInterval)
		defer t.Stop()
		for {
			select {
			case <-w.done:
				return
			case <-wctx.Done():
				return
			case <-t.C:
			}
			if err := r.runGone(wctx, b); err != nil {
				cancel(err)
				return
			}
		}
	}()
	return w
}

// stop ends the watch; call it when the command is over.
func (w *runWatch) stop() {
	close(w.done)
	w.cancel(nil)
}

// err turns the error of a call cut short by the watch into the reason it
// was cut short.
func (w *runWatch) err(err error) error {
	if err == nil || w.parent.Err() != nil {
		return err
	}
	if cause := context.Cause(w.ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
}

// runGone says why b's run (as it was when the command began) can no
// longer serve commands, or returns nil while it can.
func (r *Runtime) runGone(ctx context.Context, b *model.Box) error {
	cur, err := r.reload(ctx, b.ID)
	switch {
	case errors.Is(err, ErrNotFound):
		return fmt.Errorf("box %s was removed while in use: %w", b.Name, ErrNotFound)
	case err != nil:
		// The store is busy or the context ended: look again later.
	case cur.Run == nil || b.Run == nil || cur.Run.ID != b.Run.ID:
		return fmt.Errorf("box %s was restarted while in use: %w", b.Name, ErrInvalidState)
	case cur.PausedByIOError():
		return pausedError(cur)
	case cur.Status == model.StatusStopping || !cur.Status.Active():
		return fmt.Errorf("box %s was stopped while in use: %w", b.Name, ErrInvalidState)
	}
	if b.Run != nil && !b.Run.VM.IsZero() && !b.Run.VM.Alive() {
		return fmt.Errorf("the VM of box %s exited while in use: %w", b.Name, ErrInvalidState)
	}
	return nil
}

// forwardSignals passes signals on to a command and ends the call (cancel)
// when a signal arrives while the box is paused: the guest cannot act on
// it, and someone trying to stop boxctl must not wait for an unpause.
func (r *Runtime) forwardSignals(w *runWatch, b *model.Box, in <-chan int) <-chan int {
	if in == nil {
		return nil
	}
	ctx := w.ctx
	out := make(chan int, cap(in)+1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case sig, ok := <-in:
				if !ok {
					return
				}
				if cur, err := r.reload(ctx, b.ID); err == nil && cur.Status == model.StatusPaused {
					w.cancel(fmt.Errorf("signal %d cannot reach the command: %w", sig, pausedError(cur)))
					return
				}
				select {
				case out <- sig:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}
