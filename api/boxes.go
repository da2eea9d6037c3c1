package api

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
)

// boxOptions turns a create request into box options, checking it as the
// CLI checks its flags.
func boxOptions(req CreateBoxRequest) (core.BoxOptions, error) {
	if req.Image == "" {
		return core.BoxOptions{}, badRequest("image: required (an image reference, e.g. alpine or oci-layout:/DIR)")
	}
	c := model.BoxConfig{
		Image: req.Image, WorkingDir: req.Workdir, User: req.User, CPUs: req.CPUs,
		AutoRemove: req.AutoRemove, Platform: req.Platform, AllowHostLoopback: req.AllowHostLoopback,
		NetworkMode: req.Network, AllowNet: req.AllowNet, Env: req.Env, Labels: req.Labels,
		// Boxes made through the API outlive the server.
		Detach: true,
	}
	if len(req.Cmd) > 0 {
		c.Cmd = req.Cmd
	}
	if req.Entrypoint != nil {
		c.Entrypoint = append([]string{}, *req.Entrypoint...)
	}
	if req.CPUs != 0 && (req.CPUs < 1 || req.CPUs > 256) {
		return core.BoxOptions{}, badRequest(fmt.Sprintf("cpus %d: a box needs between 1 and 256 vCPUs", req.CPUs))
	}
	for _, e := range req.Env {
		if !strings.Contains(e, "=") {
			return core.BoxOptions{}, badRequest(fmt.Sprintf("env %q: write KEY=VALUE", e))
		}
	}
	if req.Memory != "" {
		n, err := config.ParseSize(req.Memory)
		if err == nil {
			err = config.CheckMemory(n)
		}
		if err != nil {
			return core.BoxOptions{}, badRequest(fmt.Sprintf("memory %s: %v", req.Memory, err))
		}
		c.MemoryMiB = n >> 20
	}
	if req.DiskSize != "" {
		n, err := config.ParseSize(req.DiskSize)
		if err == nil {
			err = config.CheckDiskSize(n)
		}
		if err != nil {
			return core.BoxOptions{}, badRequest(fmt.Sprintf("disk_size %s: %v", req.DiskSize, err))
		}
		c.DiskSize = n
	}
	for _, p := range req.Ports {
		pm, err := core.ParsePort(p)
		if err != nil {
			return core.BoxOptions{}, fmt.Errorf("ports: %w", err)
		}
		c.Ports = append(c.Ports, pm)
	}
	for _, v := range req.Volumes {
		if strings.HasPrefix(v, ".") {
			// The server's working directory means nothing to a client.
			return core.BoxOptions{}, badRequest(fmt.Sprintf("volumes %q: a host directory must be an absolute path over the API", v))
		}
		m, err := core.ParseMount(v)
		if err != nil {
			return core.BoxOptions{}, fmt.Errorf("volumes %s: %w", v, err)
		}
		c.Mounts = append(c.Mounts, m)
	}
	for k := range req.Labels {
		if k == "" {
			return core.BoxOptions{}, badRequest("labels: a label needs a key")
		}
	}
	if h := req.Health; h != nil {
		if h.Cmd == "" {
			return core.BoxOptions{}, badRequest("health.cmd: required when health is given")
		}
		hc := &model.HealthCheck{Cmd: []string{"/bin/sh", "-c", h.Cmd}, Interval: 30 * time.Second, Timeout: 30 * time.Second, Retries: 3}
		for _, d := range []struct {
			name, val string
			dst       *time.Duration
		}{{"interval", h.Interval, &hc.Interval}, {"timeout", h.Timeout, &hc.Timeout}, {"start_period", h.StartPeriod, &hc.StartPeriod}} {
			if d.val == "" {
				continue
			}
			v, err := time.ParseDuration(d.val)
			if err != nil || v < 0 {
				return core.BoxOptions{}, badRequest(fmt.Sprintf("health.%s %q: a duration such as 30s", d.name, d.val))
			}
			*d.dst = v
		}
		if h.Retries != 0 {
			hc.Retries = h.Retries
		}
		c.Health = hc
	}
	return core.BoxOptions{Name: req.Name, Config: c}, nil
}

func (s *Server) createBox(w http.ResponseWriter, r *http.Request) {
	var req CreateBoxRequest
	if err := s.decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	opts, err := boxOptions(req)
	if err != nil {
		writeError(w, err)
		return
	}
	ctx := r.Context()
	if req.Pull {
		if _, err := s.rt.EnsureImage(ctx, opts.Config.Image, opts.Config.Platform, nil); err != nil {
			writeError(w, err)
			return
		}
	}
	box, err := s.rt.Create(ctx, opts)
	if err != nil {
		writeError(w, err)
		return
	}
	if req.Start {
		if err := s.rt.Start(ctx, box.ID(), core.Detach(true)); err != nil {
			writeError(w, err)
			return
		}
	}
	s.writeBox(w, r, box.ID(), http.StatusCreated)
}

func (s *Server) writeBox(w http.ResponseWriter, r *http.Request, ref string, status int) {
	b, err := s.rt.GetInfo(r.Context(), ref)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, status, b)
}

func (s *Server) listBoxes(w http.ResponseWriter, r *http.Request) {
	boxes, err := s.rt.List(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	if label := r.URL.Query().Get("label"); label != "" {
		k, v, hasValue := strings.Cut(label, "=")
		var kept []*model.Box
		for _, b := range boxes {
			if got, ok := b.Config.Labels[k]; ok && (!hasValue || got == v) {
				kept = append(kept, b)
			}
		}
		boxes = kept
	}
	if boxes == nil {
		boxes = []*model.Box{}
	}
	writeJSON(w, http.StatusOK, BoxList{Boxes: boxes})
}

func (s *Server) getBox(w http.ResponseWriter, r *http.Request) {
	s.writeBox(w, r, r.PathValue("id"), http.StatusOK)
}

func (s *Server) removeBox(w http.ResponseWriter, r *http.Request) {
	force, err := boolParam(r, "force")
	if err != nil {
		writeError(w, err)
		return
	}
	if err := s.rt.Remove(r.Context(), r.PathValue("id"), core.RemoveOptions{Force: force}); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) startBox(w http.ResponseWriter, r *http.Request) {
	var req StartRequest
	if err := s.decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	opts := []core.StartOption{core.Detach(true)}
	if req.Cold {
		opts = append(opts, core.Cold())
	}
	id := r.PathValue("id")
	if err := s.rt.Start(r.Context(), id, opts...); err != nil {
		writeError(w, err)
		return
	}
	s.writeBox(w, r, id, http.StatusOK)
}

func (s *Server) stopBox(w http.ResponseWriter, r *http.Request) {
	var req StopRequest
	if err := s.decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	timeout := core.DefaultStopTimeout
	if req.TimeoutSeconds != nil {
		if *req.TimeoutSeconds < 0 {
			writeError(w, badRequest("timeout_seconds: cannot be negative"))
			return
		}
		timeout = time.Duration(*req.TimeoutSeconds) * time.Second
	}
	id := r.PathValue("id")
	b, err := s.rt.GetInfo(r.Context(), id)
	if err != nil {
		writeError(w, err)
		return
	}
	if err := s.rt.Stop(r.Context(), b.ID, timeout); err != nil {
		writeError(w, err)
		return
	}
	if b.Config.AutoRemove {
		// It is gone (or going) once stopped.
		w.WriteHeader(http.StatusNoContent)
		return
	}
	s.writeBox(w, r, b.ID, http.StatusOK)
}

func (s *Server) boxStats(w http.ResponseWriter, r *http.Request) {
	st, err := s.rt.Stats(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"box": st.Box, "guest": st.Guest, "vm": st.VM, "commands_executed": st.CommandsExecuted,
	})
}

// boolParam reads a query flag: absent is false; "", "1", "true" true.
func boolParam(r *http.Request, name string) (bool, error) {
	q := r.URL.Query()
	if !q.Has(name) {
		return false, nil
	}
	v := q.Get(name)
	if v == "" {
		return true, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, badRequest(fmt.Sprintf("query parameter %s=%q: true or false", name, v))
	}
	return b, nil
}

// startDetached starts a box that is not running, detached: a box the API
// boots must outlive the server (core.Exec alone would start a box that
// was created as tied to this process).
func (s *Server) startDetached(r *http.Request, ref string) (*model.Box, error) {
	b, err := s.rt.GetInfo(r.Context(), ref)
	if err != nil {
		return nil, err
	}
	if !b.Status.Active() {
		if err := s.rt.Start(r.Context(), b.ID, core.Detach(true)); err != nil {
			return nil, err
		}
	}
	return b, nil
}
