package guestinit

import (
	"net"
	"testing"
)

func TestParseCmdline(t *testing.T) {
	tests := []struct {
		name, cmdline string
		want          Config
		wantErr       bool
	}{
		{
			name:    "fcm's line",
			cmdline: "console=ttyS0 reboot=k panic=1 root=/dev/vda rw ip=172.16.0.50::172.16.0.1:255.255.255.0:cosmic-nova:eth0:off",
			want: Config{Address: net.IPv4(172, 16, 0, 50).To4(), Gateway: net.IPv4(172, 16, 0, 1).To4(),
				Mask: net.CIDRMask(24, 32), Hostname: "cosmic-nova", Device: "eth0"},
		},
		{
			name:    "dns and a /16",
			cmdline: "ip=10.1.2.3::10.1.0.1:255.255.0.0:vm:eth1:off:10.1.0.1:9.9.9.9",
			want: Config{Address: net.IPv4(10, 1, 2, 3).To4(), Gateway: net.IPv4(10, 1, 0, 1).To4(),
				Mask: net.CIDRMask(16, 32), Hostname: "vm", Device: "eth1",
				DNS: []net.IP{net.ParseIP("10.1.0.1"), net.ParseIP("9.9.9.9")}},
		},
		{name: "no ip= leaves everything alone", cmdline: "console=ttyS0 quiet", want: Config{}},
		{name: "short form", cmdline: "ip=192.168.1.9", want: Config{Address: net.IPv4(192, 168, 1, 9).To4(), Mask: net.CIDRMask(24, 32), Device: "eth0"}},
		{name: "bad address", cmdline: "ip=300.1.1.1::1.1.1.1:255.255.255.0:x:eth0:off", wantErr: true},
		{name: "dhcp is not supported", cmdline: "ip=dhcp", wantErr: true},
		{name: "bad mask", cmdline: "ip=10.0.0.2::10.0.0.1:255.0.255.0:x:eth0:off", wantErr: true},
		{name: "bad hostname", cmdline: "ip=10.0.0.2::10.0.0.1:255.255.255.0:-x:eth0:off", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseCmdline(tt.cmdline)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if !got.Address.Equal(tt.want.Address) || !got.Gateway.Equal(tt.want.Gateway) ||
				got.Mask.String() != tt.want.Mask.String() || got.Hostname != tt.want.Hostname ||
				got.Device != tt.want.Device || len(got.DNS) != len(tt.want.DNS) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			for i := range got.DNS {
				if !got.DNS[i].Equal(tt.want.DNS[i]) {
					t.Fatalf("dns %d = %s, want %s", i, got.DNS[i], tt.want.DNS[i])
				}
			}
		})
	}
}
