package daemon

import (
	"context"
	"net/http"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vm"
)

// Images is what the image handlers need of the vm manager: the stored bases
// and their VMs, and a prune of the unused ones.
type Images interface {
	Images(ctx context.Context) ([]api.Image, error)
	PruneImages(ctx context.Context) (*api.PruneImagesResponse, error)
}

var _ Images = (*vm.Manager)(nil)

// listImages is GET /v1/images.
func (s *Server) listImages(w http.ResponseWriter, r *http.Request, _ *store.Token) {
	if s.Images == nil {
		writeError(w, http.StatusServiceUnavailable, api.CodeUnavailable, "this daemon keeps no images")
		return
	}
	imgs, err := s.Images.Images(r.Context())
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, api.ListImagesResponse{Images: imgs})
}

// pruneImages is POST /v1/images/prune: it removes the bases that are neither
// current nor used by a VM.
func (s *Server) pruneImages(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	if s.Images == nil {
		writeError(w, http.StatusServiceUnavailable, api.CodeUnavailable, "this daemon keeps no images")
		return
	}
	res, err := s.Images.PruneImages(r.Context())
	if err != nil {
		s.fail(w, err)
		return
	}
	s.logger().Info("images pruned", "removed", len(res.Removed), "kept", res.Kept, "freed", res.Freed, "by", tok.ID)
	writeJSON(w, http.StatusOK, res)
}
