package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/fcmhost/fcm/internal/vmm"
)

func TestJailerArgs(t *testing.T) {
	j := &Jailer{Binary: "/usr/bin/jailer", UID: 1234, GID: 5678}
	got := strings.Join(j.Args("/usr/bin/firecracker", "abc12345"), " ")
	want := "--id abc12345 --exec-file /usr/bin/firecracker --uid 1234 --gid 5678 --chroot-base-dir /srv/jailer -- --api-sock /run/firecracker.socket"
	if got != want {
		t.Errorf("jailer args\n got %s\nwant %s", got, want)
	}
	j.ChrootBase = "/var/jail"
	if d := j.ChrootDir("/usr/bin/firecracker", "abc12345"); d != "/var/jail/firecracker/abc12345/root" {
		t.Errorf("ChrootDir = %s", d)
	}
	d := &Driver{binary: "/usr/bin/firecracker", jailer: j}
	bin, args := d.Command(vmm.Spec{ID: "abc12345", Dir: "/x"})
	if bin != "/usr/bin/jailer" || args[0] != "--id" {
		t.Errorf("Command with jailer = %s %v", bin, args)
	}
	d.jailer = nil
	bin, args = d.Command(vmm.Spec{ID: "abc12345", Dir: "/var/lib/firecracker/vms/abc12345"})
	if bin != "/usr/bin/firecracker" || strings.Join(args, " ") != "--api-sock /var/lib/firecracker/vms/abc12345/firecracker.socket --id abc12345" {
		t.Errorf("Command = %s %v", bin, args)
	}
}

// recorder is a tiny Firecracker-shaped API on a unix socket that fails one call.
type recorder struct {
	mu     sync.Mutex
	calls  []string
	bodies []map[string]any
	failOn string
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	call := req.Method + " " + req.URL.Path
	data, _ := io.ReadAll(req.Body)
	var body map[string]any
	json.Unmarshal(data, &body)
	r.mu.Lock()
	r.calls = append(r.calls, call)
	r.bodies = append(r.bodies, body)
	r.mu.Unlock()
	if call == r.failOn {
		w.WriteHeader(400)
		w.Write([]byte(`{"fault_message":"Cannot open kernel image: No such file or directory (os error 2)"}`))
		return
	}
	w.WriteHeader(204)
}

func serve(t *testing.T, h http.Handler) string {
	sock := filepath.Join(t.TempDir(), "fc.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestConfigure_OrderAndBodies(t *testing.T) {
	rec := &recorder{}
	api := newAPIClient(serve(t, rec))
	spec := vmm.Spec{ID: "abc12345", Kernel: "/img/vmlinux.bin", Initrd: "/img/initrd.img",
		BootArgs: "console=ttyS0 reboot=k panic=1", Drives: []vmm.Drive{{ID: "rootfs", Path: "/vms/abc12345/rootfs.img"}},
		TapDevice: "tap_abc12345", MAC: "06:00:ac:10:00:32", VCPUs: 2, MemoryMiB: 1024}
	if err := configure(context.Background(), api, spec); err != nil {
		t.Fatal(err)
	}
	want := []string{"PUT /boot-source", "PUT /drives/rootfs", "PUT /machine-config", "PUT /network-interfaces/eth0", "PUT /actions"}
	if strings.Join(rec.calls, ",") != strings.Join(want, ",") {
		t.Fatalf("calls %v, want %v", rec.calls, want)
	}
	checks := []map[string]any{
		{"kernel_image_path": "/img/vmlinux.bin", "initrd_path": "/img/initrd.img", "boot_args": "console=ttyS0 reboot=k panic=1"},
		{"drive_id": "rootfs", "path_on_host": "/vms/abc12345/rootfs.img", "is_root_device": true, "is_read_only": false},
		{"vcpu_count": float64(2), "mem_size_mib": float64(1024), "track_dirty_pages": true},
		{"iface_id": "eth0", "host_dev_name": "tap_abc12345", "guest_mac": "06:00:ac:10:00:32"},
		{"action_type": "InstanceStart"},
	}
	for i, c := range checks {
		if len(rec.bodies[i]) != len(c) {
			t.Errorf("%s body %v has other fields than %v", rec.calls[i], rec.bodies[i], c)
		}
		for k, v := range c {
			if rec.bodies[i][k] != v {
				t.Errorf("%s %s = %v, want %v", rec.calls[i], k, rec.bodies[i][k], v)
			}
		}
	}
}

func TestConfigure_FaultNamesTheCall(t *testing.T) {
	rec := &recorder{failOn: "PUT /boot-source"}
	api := newAPIClient(serve(t, rec))
	err := configure(context.Background(), api, vmm.Spec{Kernel: "/missing"})
	var ae *APIError
	if !errors.As(err, &ae) || ae.Call != "PUT /boot-source" || ae.Status != 400 {
		t.Fatalf("err = %v", err)
	}
	if want := "firecracker PUT /boot-source: Cannot open kernel image: No such file or directory (os error 2) (HTTP 400)"; err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
	if len(rec.calls) != 1 {
		t.Errorf("calls after the failure: %v", rec.calls)
	}
}

// TestConfigure_Drives: one PUT /drives/<id> per drive, in the spec's order,
// the first the root device, each read-only as the spec says; Shared is fcm's
// business and does not reach Firecracker.
func TestConfigure_Drives(t *testing.T) {
	rec := &recorder{}
	api := newAPIClient(serve(t, rec))
	spec := vmm.Spec{ID: "abc12345", Kernel: "/img/vmlinux.bin", BootArgs: "console=ttyS0", VCPUs: 1, MemoryMiB: 512,
		Drives: []vmm.Drive{
			{ID: "base", Path: "/img/base.img", ReadOnly: true, Shared: true},
			{ID: "data", Path: "/vms/abc12345/data.img"},
			{ID: "swap", Path: "/vms/abc12345/swap.img"},
			{ID: "config", Path: "/vms/abc12345/config.img", ReadOnly: true},
		}}
	if err := configure(context.Background(), api, spec); err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	var calls []string
	for i, c := range rec.calls {
		if strings.HasPrefix(c, "PUT /drives/") {
			calls = append(calls, c)
			got = append(got, rec.bodies[i])
		}
	}
	if want := "PUT /drives/base,PUT /drives/data,PUT /drives/swap,PUT /drives/config"; strings.Join(calls, ",") != want {
		t.Fatalf("drive calls %v, want %s", calls, want)
	}
	for i, d := range spec.Drives {
		want := map[string]any{"drive_id": d.ID, "path_on_host": d.Path, "is_root_device": i == 0, "is_read_only": d.ReadOnly}
		if len(got[i]) != len(want) {
			t.Errorf("%s body %v has other fields than %v", calls[i], got[i], want)
		}
		for k, v := range want {
			if got[i][k] != v {
				t.Errorf("%s %s = %v, want %v", calls[i], k, got[i][k], v)
			}
		}
	}
}
