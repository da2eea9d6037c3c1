package api

import (
	"fmt"
	"net/http"
	"time"

	"github.com/boxctl/boxctl/core"
)

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request) {
	list, err := s.rt.Snapshots(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	if list == nil {
		list = []core.Snapshot{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"snapshots": list})
}

func (s *Server) createSnapshot(w http.ResponseWriter, r *http.Request) {
	var req NameRequest
	if err := s.decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	snap, err := s.rt.CreateSnapshot(r.Context(), r.PathValue("id"), req.Name)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, snap)
}

func (s *Server) removeSnapshot(w http.ResponseWriter, r *http.Request) {
	if err := s.rt.RemoveSnapshot(r.Context(), r.PathValue("id"), r.PathValue("name")); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) restoreRequest(w http.ResponseWriter, r *http.Request) (RestoreRequest, time.Duration, bool) {
	var req RestoreRequest
	if err := s.decode(w, r, &req); err != nil {
		writeError(w, err)
		return req, 0, false
	}
	timeout := core.DefaultStopTimeout
	if req.TimeoutSeconds != nil {
		if *req.TimeoutSeconds < 0 {
			writeError(w, badRequest("timeout_seconds: cannot be negative"))
			return req, 0, false
		}
		timeout = time.Duration(*req.TimeoutSeconds) * time.Second
	}
	return req, timeout, true
}

func (s *Server) restoreSnapshot(w http.ResponseWriter, r *http.Request) {
	req, timeout, ok := s.restoreRequest(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	if err := s.rt.RestoreSnapshot(r.Context(), id, r.PathValue("name"), core.RestoreOptions{Force: req.Force, StopTimeout: timeout}); err != nil {
		writeError(w, err)
		return
	}
	s.writeBox(w, r, id, http.StatusOK)
}

func (s *Server) clone(w http.ResponseWriter, r *http.Request) {
	var req CloneRequest
	if err := s.decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Count < 0 || req.Count > 1000 {
		writeError(w, badRequest(fmt.Sprintf("count %d: from 1 to 1000", req.Count)))
		return
	}
	boxes, err := s.rt.CloneBoxes(r.Context(), r.PathValue("id"), core.CloneOptions{Name: req.Name, Count: req.Count, Snapshot: req.Snapshot})
	if err != nil {
		writeError(w, err)
		return
	}
	s.writeBoxes(w, r, boxes, req.Start)
}

// writeBoxes answers with the boxes (started, detached, first if start).
func (s *Server) writeBoxes(w http.ResponseWriter, r *http.Request, boxes []*core.Box, start bool) {
	out := BoxList{Boxes: []*Box{}}
	for _, b := range boxes {
		if start {
			if err := s.rt.Start(r.Context(), b.ID(), core.Detach(true)); err != nil {
				writeError(w, err)
				return
			}
		}
		info, err := b.Info(r.Context())
		if err != nil {
			writeError(w, err)
			return
		}
		out.Boxes = append(out.Boxes, info)
	}
	writeJSON(w, http.StatusCreated, out)
}

func (s *Server) export(w http.ResponseWriter, r *http.Request) {
	withSnapshots, err := boolParam(r, "with_snapshots")
	if err != nil {
		writeError(w, err)
		return
	}
	withImage, err := boolParam(r, "with_image")
	if err != nil {
		writeError(w, err)
		return
	}
	hw := &headerWriter{w: w, contentType: "application/octet-stream"}
	if err := s.rt.Export(r.Context(), r.PathValue("id"), hw, core.ExportOptions{WithSnapshots: withSnapshots, WithImage: withImage}); err != nil && !hw.started {
		writeError(w, err)
	}
}

func (s *Server) importBox(w http.ResponseWriter, r *http.Request) {
	body := http.MaxBytesReader(w, r.Body, s.maxUpload)
	box, err := s.rt.Import(r.Context(), body, core.ImportOptions{Name: r.URL.Query().Get("name")})
	if err != nil {
		writeError(w, s.uploadErr(err))
		return
	}
	s.writeBox(w, r, box.ID(), http.StatusCreated)
}

func (s *Server) listCheckpoints(w http.ResponseWriter, r *http.Request) {
	list, err := s.rt.Checkpoints(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	if list == nil {
		list = []core.CheckpointInfo{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"checkpoints": list})
}

func (s *Server) createCheckpoint(w http.ResponseWriter, r *http.Request) {
	var req NameRequest
	if err := s.decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	cp, err := s.rt.CreateCheckpoint(r.Context(), r.PathValue("id"), req.Name)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, cp)
}

func (s *Server) removeCheckpoint(w http.ResponseWriter, r *http.Request) {
	if err := s.rt.RemoveCheckpoint(r.Context(), r.PathValue("id"), r.PathValue("name")); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) restoreCheckpoint(w http.ResponseWriter, r *http.Request) {
	req, timeout, ok := s.restoreRequest(w, r)
	if !ok {
		return
	}
	detach := true
	id := r.PathValue("id")
	if err := s.rt.RestoreCheckpoint(r.Context(), id, r.PathValue("name"), core.RestoreCheckpointOptions{Force: req.Force, StopTimeout: timeout, Detach: &detach}); err != nil {
		writeError(w, err)
		return
	}
	s.writeBox(w, r, id, http.StatusOK)
}

func (s *Server) fork(w http.ResponseWriter, r *http.Request) {
	var req ForkRequest
	if err := s.decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Count < 0 || req.Count > 100 {
		writeError(w, badRequest(fmt.Sprintf("count %d: from 1 to 100", req.Count)))
		return
	}
	detach := true
	info, err := s.rt.Fork(r.Context(), r.PathValue("id"), core.ForkOptions{Name: req.Name, Count: req.Count, Detach: &detach})
	if err != nil {
		writeError(w, err)
		return
	}
	s.writeBoxes(w, r, info.Boxes, false)
}
