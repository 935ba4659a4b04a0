// Package basetest makes stand-in guest images for tests that never boot one:
// a kernel, initrd and root filesystem of a few bytes with an image.json, in
// the layout `fcm image build` writes.
package basetest

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fcmhost/fcm/internal/base"
	"github.com/fcmhost/fcm/internal/image"
)

// Source writes an image whose files hold tag into dir and returns it.
func Source(t testing.TB, dir, tag string) base.Source {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src := base.Source{Kernel: filepath.Join(dir, image.KernelFile), Initrd: filepath.Join(dir, image.InitrdFile), Rootfs: filepath.Join(dir, image.RootfsFile)}
	for _, f := range []string{src.Kernel, src.Initrd, src.Rootfs} {
		os.Remove(f) // replaced, as a build does, never written in place
		if err := os.WriteFile(f, []byte(tag+" "+filepath.Base(f)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	id, err := image.ContentID(src.Kernel, src.Initrd, src.Rootfs)
	if err != nil {
		t.Fatal(err)
	}
	if err := image.WriteManifest(dir, &image.Manifest{ID: id, Variant: "test-" + tag, Built: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	return src
}

// Store opens the image store of dataDir with a stand-in image tagged tag.
func Store(t testing.TB, dataDir, tag string) *base.Store {
	t.Helper()
	s, err := base.Open(dataDir, Source(t, filepath.Join(dataDir, "image"), tag))
	if err != nil {
		t.Fatal(err)
	}
	return s
}
