package vmm

import (
	"strings"
	"testing"
)

func TestSpec_Validate(t *testing.T) {
	good := Spec{ID: "abc123", Dir: "/d", Kernel: "/k", Drives: []Drive{{ID: "rootfs", Path: "/r"}}, TapDevice: "tap_abc123",
		MAC: "06:00:ac:10:00:32", VCPUs: 1, MemoryMiB: 512}
	tests := []struct {
		name    string
		mutate  func(*Spec)
		wantErr string
	}{
		{"good", func(*Spec) {}, ""},
		{"id with a slash", func(s *Spec) { s.ID = "../x" }, "invalid vm id"},
		{"upper-case id", func(s *Spec) { s.ID = "ABC" }, "invalid vm id"},
		{"relative kernel", func(s *Spec) { s.Kernel = "vmlinux" }, "kernel path"},
		{"relative initrd", func(s *Spec) { s.Initrd = "initrd.img" }, "initrd path"},
		{"tap name too long", func(s *Spec) { s.TapDevice = "tap_0123456789abc" }, "tap device"},
		{"tap with a comma", func(s *Spec) { s.TapDevice = "tap,x" }, "tap device"},
		{"dir too long for a socket", func(s *Spec) { s.Dir = "/" + strings.Repeat("d", 80) }, "unix socket"},
		{"bad mac", func(s *Spec) { s.MAC = "nope" }, "invalid MAC"},
		{"no vcpus", func(s *Spec) { s.VCPUs = 0 }, "vcpus"},
		{"too little memory", func(s *Spec) { s.MemoryMiB = 64 }, "memory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := good
			tt.mutate(&s)
			err := s.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestOpen_UnknownDriver(t *testing.T) {
	_, err := Open("nope")
	if err == nil || !strings.Contains(err.Error(), `unknown hypervisor "nope"`) {
		t.Fatalf("Open(nope) = %v", err)
	}
}
