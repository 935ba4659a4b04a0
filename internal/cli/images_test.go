package cli

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/api"
)

// imagesDaemon answers GET /v1/images with imgs and POST /v1/images/prune
// with prune.
func imagesDaemon(t *testing.T, imgs []api.Image, prune api.PruneImagesResponse) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method + " " + r.URL.Path {
		case "GET /v1/images":
			json.NewEncoder(w).Encode(api.ListImagesResponse{Images: imgs})
		case "POST /v1/images/prune":
			json.NewEncoder(w).Encode(prune)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	t.Setenv("FCM_HOST", srv.URL)
	t.Setenv("FCM_TOKEN", "fcm_tok")
}

func TestImageLsAndPrune(t *testing.T) {
	now := time.Now()
	newer := api.Image{ID: "9c1e0b7a3f21" + strings.Repeat("0", 52), Variant: "minimal", Built: now.Add(-5 * time.Minute),
		Bytes: 389 << 20, Current: true, VMs: []string{"web2"}}
	older := api.Image{ID: "3f2a9c0d1b2e" + strings.Repeat("1", 52), Variant: "full", Built: now.Add(-3 * time.Hour),
		Bytes: 1900 << 20, VMs: []string{}}
	imagesDaemon(t, []api.Image{newer, older}, api.PruneImagesResponse{Removed: []api.Image{older}, Kept: 1, Freed: 1900<<20 + 4096})
	out, err := runCLI(nil, "image", "ls")
	want := `ID            VARIANT  BUILT   SIZE     CURRENT  VMS
9c1e0b7a3f21  minimal  5m ago  389 MiB  *        web2
3f2a9c0d1b2e  full     3h ago  1.9 GiB           -
`
	if err != nil || out != want {
		t.Errorf("image ls: %v\n%s\nwant:\n%s", err, out, want)
	}
	out, err = runCLI(nil, "image", "prune")
	want = "Removed 3f2a9c0d1b2e (full, built 3h ago, 1.9 GiB)\nFreed 1.9 GiB; 1 image kept (in use or current)\n"
	if err != nil || out != want {
		t.Errorf("image prune: %v\n%s\nwant:\n%s", err, out, want)
	}

	// The old base's files are linked from elsewhere still: nothing freed.
	imagesDaemon(t, []api.Image{newer}, api.PruneImagesResponse{Removed: []api.Image{older}, Kept: 1, Freed: 4096})
	out, err = runCLI(nil, "image", "prune")
	want = "Removed 3f2a9c0d1b2e (full, built 3h ago, 1.9 GiB)\nFreed 4 KiB; 1 image kept (in use or current)\n" +
		"(1.9 GiB of the removed files is still linked from elsewhere, such as the directory a build wrote: it is freed when that goes)\n"
	if err != nil || out != want {
		t.Errorf("image prune, files linked elsewhere: %v\n%s\nwant:\n%s", err, out, want)
	}

	imagesDaemon(t, []api.Image{newer}, api.PruneImagesResponse{Removed: []api.Image{}, Kept: 2})
	if out, err := runCLI(nil, "image", "prune"); err != nil || out != "nothing to prune: 2 images, all in use or current\n" {
		t.Errorf("image prune with nothing to prune: %v %q", err, out)
	}
}
