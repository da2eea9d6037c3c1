package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"text/template"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
)

// boxView is what --format templates see: the record plus display fields.
type boxView struct {
	*model.Box
	Image   string
	State   string
	Created string
}

func viewOf(b *model.Box, now time.Time) boxView {
	return boxView{Box: b, Image: b.Config.Image, State: humanState(b, now), Created: ago(b.CreatedAt, now)}
}

// humanState renders a box's status like Docker's STATUS column.
func humanState(b *model.Box, now time.Time) string {
	switch b.Status {
	case model.StatusConfigured:
		if b.Error != "" {
			return "Created (last start failed)"
		}
		return "Created"
	case model.StatusRunning:
		s := "Up " + duration(now.Sub(b.Run.StartedAt))
		if b.Health.Status != "" {
			s += " (" + b.Health.Status + ")"
		}
		if !b.Run.Monitor.IsZero() && !b.Run.Monitor.Alive() {
			// The VM runs on, but nothing records its exit or runs its
			// health checks; `boxctl stop` still works.
			s += " (monitor gone)"
		}
		return s
	case model.StatusPaused:
		if b.PausedByIOError() {
			if strings.Contains(strings.ToLower(b.Run.Pause.Reason), "space") {
				return "Paused (disk full)"
			}
			return "Paused (disk error)"
		}
		return "Paused"
	case model.StatusSuspended:
		if b.Run != nil && b.Run.Exit != nil {
			return "Suspended " + ago(b.Run.Exit.At, now)
		}
		return "Suspended"
	case model.StatusStopped:
		if b.Run != nil && b.Run.Exit != nil {
			return fmt.Sprintf("Exited (%d) %s", b.Run.Exit.Code, ago(b.Run.Exit.At, now))
		}
		return "Exited"
	default:
		return strings.ToUpper(string(b.Status[:1])) + string(b.Status[1:])
	}
}

func ago(t time.Time, now time.Time) string {
	if t.IsZero() {
		return ""
	}
	return duration(now.Sub(t)) + " ago"
}

func duration(d time.Duration) string {
	switch {
	case d < time.Second:
		return "Less than a second"
	case d < time.Minute:
		return plural(int(d/time.Second), "second")
	case d < time.Hour:
		return plural(int(d/time.Minute), "minute")
	case d < 48*time.Hour:
		return plural(int(d/time.Hour), "hour")
	default:
		return plural(int(d/(24*time.Hour)), "day")
	}
}

func plural(n int, unit string) string {
	if n == 1 {
		if unit == "hour" {
			return "About an hour"
		}
		return "1 " + unit
	}
	return strconv.Itoa(n) + " " + unit + "s" // not Sprintf: ls calls this per box
}

// printBoxes writes boxes as a table, JSON, or through a Go template.
func printBoxes(out io.Writer, boxes []*model.Box, format string, now time.Time) error {
	// tabwriter and templates write in small pieces; one write per call
	// keeps a listing of thousands of boxes fast.
	w := bufio.NewWriter(out)
	if err := writeBoxes(w, boxes, format, now); err != nil {
		return err
	}
	return w.Flush()
}

func writeBoxes(w io.Writer, boxes []*model.Box, format string, now time.Time) error {
	switch format {
	case "", "table":
		rows := make([][]string, 0, len(boxes)+1)
		rows = append(rows, []string{"BOX ID", "NAME", "IMAGE", "STATUS", "CREATED"})
		for _, b := range boxes {
			v := viewOf(b, now)
			rows = append(rows, []string{b.ShortID(), b.Name, v.Image, v.State, v.Created})
		}
		return writeTable(w, rows)
	case "json":
		if boxes == nil {
			boxes = []*model.Box{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(boxes)
	default:
		tmpl, err := template.New("format").Option("missingkey=error").Parse(format)
		if err != nil {
			return fmt.Errorf("--format: %w", err)
		}
		for _, b := range boxes {
			if err := tmpl.Execute(w, viewOf(b, now)); err != nil {
				return fmt.Errorf("--format: %w", err)
			}
			fmt.Fprintln(w)
		}
		return nil
	}
}

func lookupEnv(k string) (string, bool) { return os.LookupEnv(k) }

// writeTable writes rows as left-aligned columns three spaces apart. It is
// tabwriter's output for this simple case, without its per-cell cost, which
// dominated listing thousands of boxes.
func writeTable(w io.Writer, rows [][]string) error {
	var widths []int
	for _, r := range rows {
		for i, c := range r {
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	bw := bufio.NewWriter(w)
	spaces := strings.Repeat(" ", 64)
	for _, r := range rows {
		for i, c := range r {
			bw.WriteString(c)
			if i == len(r)-1 {
				break
			}
			for pad := widths[i] - utf8.RuneCountInString(c) + 3; pad > 0; pad -= len(spaces) {
				bw.WriteString(spaces[:min(pad, len(spaces))])
			}
		}
		bw.WriteByte('\n')
	}
	return bw.Flush()
}

// writeList prints a listing: as indented JSON (list, an empty slice
// rather than null) for format "json", else as a table of header and the
// rows row writes, tab-separated.
func (a *app) writeList(format string, list any, header string, rows func(w io.Writer)) error {
	switch format {
	case "json":
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(list)
	case "", "table":
	default:
		return fmt.Errorf("--format %q: use table or json", format)
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, header)
	rows(tw)
	return tw.Flush()
}

// removeEach is the RunE of `X rm BOX NAME [NAME...]`: rm each name of the
// box, printing it once removed.
func (a *app) removeEach(rm func(rt *core.Runtime, ctx context.Context, box, name string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		rt, err := a.runtime(cmd.Context())
		if err != nil {
			return err
		}
		return forEachBox(args[1:], func(name string) error {
			if err := rm(rt, cmd.Context(), args[0], name); err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, name)
			return nil
		})
	}
}
