package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vmm"
)

// ImageMetaFile is the file, beside a VM's suspend image, that says what the
// image was made with: the hypervisor and machine, and its drives as they
// were. A wake whose hypervisor, machine or drives differ cannot use the
// image: the VM boots cold instead (a QEMU upgraded, a disk changed on the
// host).
const ImageMetaFile = "suspend.meta"

// imageMeta is what ImageMetaFile holds.
type imageMeta struct {
	Hypervisor string       `json:"hypervisor"`
	Machine    string       `json:"machine,omitempty"` // the driver's fingerprint of the machine
	Drives     []driveStamp `json:"drives"`
}

type driveStamp struct {
	Path  string `json:"path"`
	Size  int64  `json:"size"`
	MTime int64  `json:"mtime_ns"`
}

// metaFor is spec's image meta as things are now.
func (m *Manager) metaFor(spec vmm.Spec) (imageMeta, error) {
	meta := imageMeta{Hypervisor: m.cfg.Driver.Name()}
	if f, ok := m.cfg.Driver.(interface{ Fingerprint(vmm.Spec) string }); ok {
		meta.Machine = f.Fingerprint(spec)
	}
	for _, d := range spec.Drives {
		st, err := os.Stat(d.Path)
		if err != nil {
			return meta, err
		}
		meta.Drives = append(meta.Drives, driveStamp{Path: d.Path, Size: st.Size(), MTime: st.ModTime().UnixNano()})
	}
	return meta, nil
}

// writeImageMeta records what spec's suspend image was made with.
func (m *Manager) writeImageMeta(spec vmm.Spec) error {
	meta, err := m.metaFor(spec)
	if err != nil {
		return err
	}
	b, err := json.Marshal(meta)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(spec.Dir, ImageMetaFile), b, 0o600)
}

// imageStale says why vm's suspend image cannot be used ("" when it can,
// or when it has no meta: an image made before there was one).
func (m *Manager) imageStale(ctx context.Context, vm *store.VM) string {
	b, err := os.ReadFile(filepath.Join(m.dir(vm.ID), ImageMetaFile))
	if errors.Is(err, os.ErrNotExist) {
		return ""
	}
	var was imageMeta
	if err != nil || json.Unmarshal(b, &was) != nil {
		return "its suspend image's record is unreadable"
	}
	spec, err := m.spec(ctx, vm)
	if err != nil {
		return ""
	}
	now, err := m.metaFor(spec)
	if err != nil {
		return fmt.Sprintf("its drives: %v", err)
	}
	switch {
	case now.Hypervisor != was.Hypervisor:
		return fmt.Sprintf("it was suspended under %s, the daemon runs %s", was.Hypervisor, now.Hypervisor)
	case now.Machine != was.Machine:
		return "its hypervisor or machine changed since it was suspended (an upgrade?)"
	case len(now.Drives) != len(was.Drives):
		return "its drives changed since it was suspended"
	}
	var changed []string
	for i, d := range now.Drives {
		if d != was.Drives[i] {
			changed = append(changed, filepath.Base(d.Path))
		}
	}
	if len(changed) > 0 {
		return "its disk changed on the host since it was suspended (" + strings.Join(changed, ", ") + ")"
	}
	return ""
}

// wakeCold is Wake for a VM whose suspend image cannot be used (why): the
// image is discarded and the VM boots afresh, its disk as it is.
func (m *Manager) wakeCold(ctx context.Context, name, id, why string) (*store.VM, error) {
	vm, op, _, err := m.opFor(name, id, "wake", "waking", api.StateSuspended)
	if err != nil {
		return nil, err
	}
	m.log.Warn("vm's suspend image cannot be used; it boots cold", "name", name, "why", why)
	_, err = m.halt(context.WithoutCancel(ctx), vm, op, func(v *store.VM) {
		v.State, v.Reason, v.PID, v.SuspendedAt = api.StateStopped, "", 0, time.Time{}
		v.AddEvent(time.Now(), "woke-cold", why)
	})
	m.end(name)
	if err != nil {
		m.markError(vm.ID, op.ID, err)
		return nil, err
	}
	return m.startAs(ctx, "start", name, id, nil)
}
