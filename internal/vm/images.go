package vm

import (
	"context"
	"errors"
	"fmt"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/base"
	"github.com/fcmhost/fcm/internal/store"
)

// Images lists the stored bases, newest build first, each with the VMs made
// from it. The source image is looked at first, so a build since the last
// create shows as the current base.
func (m *Manager) Images(ctx context.Context) ([]api.Image, error) {
	if _, err := m.cfg.Bases.Current(ctx); err != nil {
		// The stored bases are still worth seeing; none is marked current
		// unless one was before.
		m.log.Warn("images: the current image", "err", err)
	}
	var users map[string][]string
	err := m.cfg.Store.View(func(tx *store.Tx) (err error) {
		users, err = baseUsers(tx)
		return err
	})
	if err != nil {
		return nil, err
	}
	infos, err := m.cfg.Bases.List()
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	cur := m.cfg.Bases.CurrentID()
	out := make([]api.Image, 0, len(infos))
	for _, in := range infos {
		out = append(out, toAPIImage(in, in.ID == cur, users[in.ID]))
	}
	return out, nil
}

// PruneImages removes every stored base that is neither current nor the base
// of a VM (in any state), and says which it removed, how many it kept and
// the host disk it gave back. Each is retired (taken out of the store) inside
// one store transaction that also reads every VM: a create records its VM in
// a transaction of its own after checking its base is there, and the store
// runs one at a time, so a create either saw its base and made a VM this
// prune sees, or finds it gone and fails. The retired directories are deleted
// after.
func (m *Manager) PruneImages(ctx context.Context) (*api.PruneImagesResponse, error) {
	if _, err := m.cfg.Bases.Current(ctx); err != nil {
		// Without the current base known, prune could remove the one new
		// VMs are about to be made from.
		return nil, fmt.Errorf("prune images: %w", err)
	}
	res := &api.PruneImagesResponse{Removed: []api.Image{}}
	var retired []string
	var errs []error
	err := m.cfg.Store.Update(func(tx *store.Tx) error {
		users, err := baseUsers(tx)
		if err != nil {
			return err
		}
		infos, err := m.cfg.Bases.List()
		if err != nil {
			return err
		}
		for _, in := range infos {
			if len(users[in.ID]) > 0 || in.ID == m.cfg.Bases.CurrentID() {
				res.Kept++
				continue
			}
			dir, err := m.cfg.Bases.Retire(in.ID)
			switch {
			case errors.Is(err, base.ErrNotFound):
				continue // retired meanwhile by another prune
			case err != nil && in.ID == m.cfg.Bases.CurrentID():
				res.Kept++ // a build of the same image made it current again
				continue
			case err != nil:
				res.Kept++
				errs = append(errs, err)
				continue
			}
			retired = append(retired, dir)
			res.Removed = append(res.Removed, toAPIImage(in, false, nil))
		}
		return nil
	})
	// The transaction wrote nothing: even when it failed, what it retired was
	// used by no VM, and no create can use it now.
	for i, dir := range retired {
		freed := base.Reclaimable(dir)
		if derr := base.Delete(dir); derr != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w (the daemon removes it at its next start)", dir, derr))
			continue
		}
		res.Freed += freed
		r := res.Removed[i]
		m.log.Info("image pruned", "id", base.Short(r.ID), "variant", r.Variant, "bytes", r.Bytes, "freed", freed)
	}
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return res, fmt.Errorf("prune images: %w", errors.Join(errs...))
	}
	return res, nil
}

// baseUsers maps each base id to the names of the VMs made from it. A VM made
// before bases were shared (Layout "") has a full disk of its own and uses no
// stored base.
func baseUsers(tx *store.Tx) (map[string][]string, error) {
	vms, err := tx.VMs()
	if err != nil {
		return nil, err
	}
	users := map[string][]string{}
	for _, v := range vms {
		if v.Layout == LayoutOverlay && v.Base != "" {
			users[v.Base] = append(users[v.Base], v.Name)
		}
	}
	return users, nil
}

func toAPIImage(in base.Info, current bool, vms []string) api.Image {
	a := api.Image{ID: in.ID, Bytes: in.Bytes, Current: current, VMs: vms}
	if a.VMs == nil {
		a.VMs = []string{}
	}
	if m := in.Manifest; m != nil {
		a.Variant, a.Suite, a.Built = m.Variant, m.Suite, m.Built
	}
	return a
}
