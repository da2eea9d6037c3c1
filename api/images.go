package api

import (
	"encoding/json"
	"net/http"
	"sync"

	"github.com/boxctl/boxctl/sdk"
)

func imageOf(img sdk.Image, usedBy []string) Image {
	refs := img.References
	if refs == nil {
		refs = []string{}
	}
	if usedBy == nil {
		usedBy = []string{}
	}
	return Image{
		Digest: img.Digest, References: refs, Platform: img.Platform.String(), Size: img.Size,
		CreatedAt: img.CreatedAt, PulledAt: img.PulledAt, UsedBy: usedBy,
	}
}

func (s *Server) listImages(w http.ResponseWriter, r *http.Request) {
	list, err := s.rt.Images(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	out := ImageList{Images: []Image{}}
	for _, i := range list {
		out.Images = append(out.Images, imageOf(i.Image, i.UsedBy))
	}
	writeJSON(w, http.StatusOK, out)
}

// pullImage streams the pull's progress as NDJSON: "layer" and "status"
// events, then one "done" (with the image) or "error" event. Errors found
// before the pull starts (a bad body) are plain JSON errors.
func (s *Server) pullImage(w http.ResponseWriter, r *http.Request) {
	var req PullRequest
	if err := s.decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Ref == "" {
		writeError(w, badRequest("ref: required (an image reference)"))
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	var mu sync.Mutex
	send := func(ev PullEvent) {
		mu.Lock()
		defer mu.Unlock()
		if enc.Encode(ev) == nil && flusher != nil {
			flusher.Flush()
		}
	}
	img, err := s.rt.Pull(r.Context(), req.Ref, req.Platform, func(ev sdk.PullEvent) {
		out := PullEvent{Type: "status", Status: ev.Status}
		if l := ev.Layer; l != nil {
			out = PullEvent{Type: "layer", Layer: &LayerEvent{Digest: l.Digest, Total: l.Total, Done: l.Done, State: l.State.String()}}
		}
		send(out)
	})
	if err != nil {
		code := classify(err)
		send(PullEvent{Type: "error", Error: &ErrorDetail{Code: code, Message: err.Error()}})
		return
	}
	i := imageOf(img, nil)
	send(PullEvent{Type: "done", Image: &i})
}

func (s *Server) removeImage(w http.ResponseWriter, r *http.Request) {
	ref := r.URL.Query().Get("ref")
	if ref == "" {
		writeError(w, badRequest("query parameter ref: required (an image reference or digest)"))
		return
	}
	force, err := boolParam(r, "force")
	if err != nil {
		writeError(w, err)
		return
	}
	rm, err := s.rt.RemoveImage(r.Context(), ref, force)
	if err != nil {
		writeError(w, err)
		return
	}
	if rm.Images == nil {
		rm.Images = []string{}
	}
	writeJSON(w, http.StatusOK, RemovedImages{Images: rm.Images, Reclaimed: rm.Reclaimed})
}
