package daemon

import (
	"context"
	"errors"
	"net/http/httptest"
	"testing"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/client"
)

// fakeImages is an Images of function fields.
type fakeImages struct {
	list  func(ctx context.Context) ([]api.Image, error)
	prune func(ctx context.Context) (*api.PruneImagesResponse, error)
}

var _ Images = (*fakeImages)(nil)

func (f *fakeImages) Images(ctx context.Context) ([]api.Image, error) { return f.list(ctx) }
func (f *fakeImages) PruneImages(ctx context.Context) (*api.PruneImagesResponse, error) {
	return f.prune(ctx)
}

func TestServer_Images(t *testing.T) {
	f := newFixture(t)
	imgs := &fakeImages{
		list: func(context.Context) ([]api.Image, error) {
			return []api.Image{{ID: "aa", Variant: "minimal", Bytes: 10, Current: true, VMs: []string{"alice-vm"}}}, nil
		},
		prune: func(context.Context) (*api.PruneImagesResponse, error) {
			return &api.PruneImagesResponse{Removed: []api.Image{}, Kept: 1}, nil
		},
	}
	srv := httptest.NewServer((&Server{Store: f.store, VMs: f.fake, Images: imgs}).Handler())
	t.Cleanup(srv.Close)
	admin := &client.Client{Host: srv.URL, Token: f.admin}
	ctx := context.Background()

	list, err := admin.ListImages(ctx)
	if err != nil || len(list) != 1 || list[0].ID != "aa" || !list[0].Current || list[0].VMs[0] != "alice-vm" {
		t.Fatalf("ListImages = %+v, %v", list, err)
	}
	res, err := admin.PruneImages(ctx)
	if err != nil || res.Removed == nil || len(res.Removed) != 0 || res.Kept != 1 {
		t.Fatalf("PruneImages = %+v, %v", res, err)
	}

	// Users may not: the list names everyone's VMs.
	user := &client.Client{Host: srv.URL, Token: f.user}
	var ae *api.Error
	if _, err := user.ListImages(ctx); !errors.As(err, &ae) || ae.Code != api.CodeForbidden {
		t.Errorf("a user's ListImages: %v, want forbidden", err)
	}
	if _, err := user.PruneImages(ctx); !errors.As(err, &ae) || ae.Code != api.CodeForbidden {
		t.Errorf("a user's PruneImages: %v, want forbidden", err)
	}

	// A failed prune is a JSON error.
	imgs.prune = func(context.Context) (*api.PruneImagesResponse, error) {
		return nil, errors.New("prune images: disk on fire")
	}
	if _, err := admin.PruneImages(ctx); !errors.As(err, &ae) || ae.Code != api.CodeInternal || ae.Message != "prune images: disk on fire" {
		t.Errorf("failed prune: %v", err)
	}

	// A server without images says so.
	none := httptest.NewServer((&Server{Store: f.store, VMs: f.fake}).Handler())
	t.Cleanup(none.Close)
	if _, err := (&client.Client{Host: none.URL, Token: f.admin}).ListImages(ctx); !errors.As(err, &ae) || ae.Code != api.CodeUnavailable {
		t.Errorf("no images: %v", err)
	}
}
