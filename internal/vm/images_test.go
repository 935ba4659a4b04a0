package vm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/base/basetest"
	"github.com/fcmhost/fcm/internal/guest"
	"github.com/fcmhost/fcm/internal/store"
)

// build replaces the manager's source image with one tagged tag, as `fcm
// image build` does, and returns its id once the store imported it.
func build(t *testing.T, m *Manager, tag string) string {
	t.Helper()
	basetest.Source(t, filepath.Join(m.cfg.DataDir, "image"), tag)
	b, err := m.cfg.Bases.Current(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return b.ID
}

// onBase makes VM name a VM of base id.
func onBase(t *testing.T, m *Manager, name, id, state, baseID string) {
	t.Helper()
	v := addVM(t, m, name, id, state)
	v.Base, v.Layout = baseID, LayoutOverlay
	if err := m.cfg.Store.Update(func(tx *store.Tx) error { return tx.PutVM(v) }); err != nil {
		t.Fatal(err)
	}
}

func imageIDs(imgs []api.Image) []string {
	var ids []string
	for _, i := range imgs {
		ids = append(ids, i.ID)
	}
	slices.Sort(ids)
	return ids
}

func sorted(ids ...string) []string { slices.Sort(ids); return ids }

// TestPruneImages: prune removes the bases no VM uses, except the current
// one, whatever state the VMs that use the others are in.
func TestPruneImages(t *testing.T) {
	ctx := context.Background()
	m, _, _ := testManager(t)
	a := build(t, m, "a")
	b := build(t, m, "b")
	c := build(t, m, "c")
	d := build(t, m, "d") // current
	onBase(t, m, "on-a", "aaaa1111", api.StateRunning, a)
	onBase(t, m, "on-b", "bbbb2222", api.StateError, b)
	onBase(t, m, "also-b", "bbbb3333", api.StateCreating, b)
	addVM(t, m, "legacy", "cccc4444", api.StateStopped) // its own full disk: no base

	imgs, err := m.Images(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := imageIDs(imgs), sorted(a, b, c, d); !slices.Equal(got, want) {
		t.Fatalf("images %v, want %v", got, want)
	}
	for _, img := range imgs {
		want := map[string][]string{a: {"on-a"}, b: {"also-b", "on-b"}, c: {}, d: {}}[img.ID]
		if !slices.Equal(img.VMs, want) || img.Current != (img.ID == d) || img.Bytes <= 0 || !strings.HasPrefix(img.Variant, "test-") {
			t.Errorf("image %+v, want vms %v, current %v", img, want, img.ID == d)
		}
	}

	res, err := m.PruneImages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := imageIDs(res.Removed); !slices.Equal(got, []string{c}) || res.Kept != 3 {
		t.Fatalf("pruned %v (kept %d), want only c (%s), 3 kept", got, res.Kept, c)
	}
	// c's files were linked from nowhere else (the source has d's now): all
	// of them, and its image.json, were freed.
	if res.Removed[0].Bytes <= 0 || res.Freed < res.Removed[0].Bytes {
		t.Errorf("pruned %+v, freed %d: want its bytes freed", res.Removed[0], res.Freed)
	}
	checkImageDirs(t, m, a, b, d)

	// Nothing more to prune; then b's VMs go, and b with them.
	if res, err := m.PruneImages(ctx); err != nil || len(res.Removed) != 0 || res.Kept != 3 || res.Freed != 0 {
		t.Fatalf("second prune: %+v, %v", res, err)
	}
	m.cfg.Store.Update(func(tx *store.Tx) error { tx.DeleteVM("on-b"); return tx.DeleteVM("also-b") })
	if res, err := m.PruneImages(ctx); err != nil || !slices.Equal(imageIDs(res.Removed), []string{b}) {
		t.Fatalf("prune after b's VMs went: %+v, %v", res, err)
	}
	checkImageDirs(t, m, a, d)
	if _, err := m.spec(ctx, getVM(t, m, "on-a")); err != nil {
		t.Errorf("the VM on a kept base cannot boot: %v", err)
	}
}

// TestPruneImages_NewBuild: a build the daemon has not seen yet is current
// for prune, and the base it replaces is not.
func TestPruneImages_NewBuild(t *testing.T) {
	m, _, _ := testManager(t)
	old := build(t, m, "old")
	basetest.Source(t, filepath.Join(m.cfg.DataDir, "image"), "new") // not imported yet
	res, err := m.PruneImages(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(imageIDs(res.Removed), []string{old}) || res.Kept != 1 {
		t.Fatalf("pruned %v (kept %d), want the old base only", imageIDs(res.Removed), res.Kept)
	}
	if cur := m.cfg.Bases.CurrentID(); cur == old || !m.cfg.Bases.Exists(cur) {
		t.Errorf("current base %s after prune", cur)
	}
}

// TestPruneImages_RacingCreate: a create that records its VM on an old base
// while a prune removes unused ones never ends with a VM whose base is gone:
// either the create wins and the base stays, or the prune does and the create
// fails.
func TestPruneImages_RacingCreate(t *testing.T) {
	ctx := context.Background()
	m, _, _ := testManager(t)
	m.memTotal = func() (int, error) { return 1 << 30, nil }
	outcomes := map[string]int{}
	for i := range 40 {
		old := build(t, m, fmt.Sprintf("old%d", i))
		build(t, m, "new") // old is neither current nor used now
		req := api.CreateVMRequest{}
		if err := validate(&req); err != nil {
			t.Fatal(err)
		}
		ident, err := guest.NewIdentity(m.cfg.Key.PublicKey())
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var vm *store.VM
		var createErr, pruneErr error
		var pruned *api.PruneImagesResponse
		start := make(chan struct{})
		wg.Add(2)
		go func() {
			defer wg.Done()
			<-start
			vm, _, createErr = m.reserve(Owner{ID: "admin"}, req, old, ident, 0)
			if createErr == nil {
				m.end(vm.Name)
			}
		}()
		go func() {
			defer wg.Done()
			<-start
			pruned, pruneErr = m.PruneImages(ctx)
		}()
		close(start)
		wg.Wait()
		if pruneErr != nil {
			t.Fatal(pruneErr)
		}
		oldGone := slices.Contains(imageIDs(pruned.Removed), old)
		switch {
		case createErr == nil && !oldGone:
			outcomes["create first"]++
		case createErr != nil && oldGone && strings.Contains(createErr.Error(), "was just removed"):
			outcomes["prune first"]++
		default:
			t.Fatalf("create: %v, old base pruned: %v", createErr, oldGone)
		}
		vms, err := m.cfg.Store.ListVMs()
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vms {
			if !m.cfg.Bases.Exists(v.Base) {
				t.Fatalf("vm %s is left on base %s, which is gone", v.Name, v.Base)
			}
		}
	}
	t.Logf("outcomes: %v", outcomes)
}

// checkImageDirs checks that the images directory holds the bases ids and
// nothing else: no base, and no retired directory, left behind.
func checkImageDirs(t *testing.T, m *Manager, ids ...string) {
	t.Helper()
	entries, err := os.ReadDir(m.cfg.Bases.Dir())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if want := sorted(ids...); !slices.Equal(got, want) {
		t.Errorf("images directory holds %v, want %v", got, want)
	}
}
