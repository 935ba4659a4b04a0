package api

import "time"

// Guest images.
//
// Every VM boots from a base: a guest image (kernel, initrd, read-only root
// filesystem) stored once on the host under its content id. A new VM is made
// from the current base, the image `fcm image build` wrote last; a VM keeps
// its base until it is recreated. Both routes are the admin's: they name
// every user's VMs.
//
// Routes (all JSON):
//
//	GET    /v1/images                 admin    -> ListImagesResponse
//	POST   /v1/images/prune           admin    -> PruneImagesResponse

// Image is one stored base.
type Image struct {
	ID      string    `json:"id"` // the content hash: 64 hex digits
	Variant string    `json:"variant"`
	Suite   string    `json:"suite,omitempty"` // the Debian release of its root filesystem
	Built   time.Time `json:"built"`
	Bytes   int64     `json:"bytes"`             // host disk its files take
	Current bool      `json:"current,omitempty"` // new VMs are made from it
	VMs     []string  `json:"vms"`               // the VMs made from it, by name
}

// ListImagesResponse is the body of GET /v1/images: the stored bases, newest
// build first.
type ListImagesResponse struct {
	Images []Image `json:"images"`
}

// PruneImagesResponse is the body of POST /v1/images/prune: the bases
// removed (neither current nor used by any VM), how many are kept, and the
// host disk removing them gave back. Freed is less than the removed bases'
// Bytes when their files are still linked elsewhere (the directory a build
// wrote, say).
type PruneImagesResponse struct {
	Removed []Image `json:"removed"`
	Kept    int     `json:"kept"`
	Freed   int64   `json:"freed"`
}
