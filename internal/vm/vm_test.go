package vm

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/store"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		req  api.CreateVMRequest
		want string // "" for valid
	}{
		{"defaults", api.CreateVMRequest{}, ""},
		{"a good name", api.CreateVMRequest{Name: "web-1"}, ""},
		{"path in name", api.CreateVMRequest{Name: "../x"}, "invalid vm name"},
		{"space in name", api.CreateVMRequest{Name: "a b"}, "invalid vm name"},
		{"300 chars", api.CreateVMRequest{Name: strings.Repeat("a", 300)}, "300 characters"},
		{"unicode", api.CreateVMRequest{Name: "ñame"}, "invalid vm name"},
		{"cpus", api.CreateVMRequest{CPUs: 33}, "cpus 33"},
		{"negative cpus", api.CreateVMRequest{CPUs: -1}, "cpus -1"},
		{"memory", api.CreateVMRequest{MemoryMiB: 64}, "memory 64 MiB"},
		{"disk", api.CreateVMRequest{DiskBytes: 1 << 20}, "disk size"},
		{"port", api.CreateVMRequest{Port: 70000}, "port 70000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := tt.req
			err := validate(&req)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if req.CPUs != 1 || req.MemoryMiB != 1024 || req.DiskBytes != 2<<30 || req.Port != 3000 {
					t.Errorf("defaults not filled: %+v", req)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrInvalid with %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "invalid request") {
				t.Errorf("message repeats itself: %q", err)
			}
		})
	}
}

func TestMACAndBootArgs(t *testing.T) {
	if got := macFor(netip.MustParseAddr("172.16.0.50")); got != "06:00:ac:10:00:32" {
		t.Errorf("macFor = %s", got)
	}
	vm := &store.VM{Name: "cosmic-nova", IP: "10.1.2.3", SwapMiB: 512}
	got := bootArgs(vm, netip.MustParsePrefix("10.1.0.0/16"))
	if !strings.Contains(got, "ip=10.1.2.3::10.1.0.1:255.255.0.0:cosmic-nova:eth0:off") || !strings.Contains(got, "fcm.swap=512") {
		t.Errorf("bootArgs = %q", got)
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{2 << 30: "2 GiB", 3 << 29: "1536 MiB", 512 << 20: "512 MiB", 110592: "108 KiB", 512: "512 B"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
