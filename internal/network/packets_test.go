package network

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// runPacketHelper runs the helpers that send single packets:
//
//	udp:     send a datagram to FCM_TEST_DST and print the answer; exit 1
//	         if none comes within 2s.
//	ping:    send an ICMP echo request to FCM_TEST_DST and exit 0 if a reply
//	         comes within 2s, 1 otherwise.
//	rawsend: send the Ethernet frames FCM_TEST_FRAMES (hex, separated by
//	         commas) out of interface FCM_TEST_IF as they are.
func runPacketHelper(mode string) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, err); return 1 }
	switch mode {
	case "udp":
		c, err := net.Dial("udp", os.Getenv("FCM_TEST_DST"))
		if err != nil {
			return fail(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte("hello")); err != nil {
			return fail(err)
		}
		b := make([]byte, 100)
		n, err := c.Read(b)
		if err != nil {
			return fail(err)
		}
		fmt.Print(string(b[:n]))
		return 0
	case "ping":
		c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
		if err != nil {
			return fail(err)
		}
		defer c.Close()
		dst := &net.IPAddr{IP: net.ParseIP(os.Getenv("FCM_TEST_DST"))}
		msg := []byte{8, 0, 0, 0, 0x12, 0x34, 0, 1, 'f', 'c', 'm'}
		binary.BigEndian.PutUint16(msg[2:], checksum(msg))
		if _, err := c.WriteTo(msg, dst); err != nil {
			return fail(err)
		}
		c.SetDeadline(time.Now().Add(2 * time.Second))
		b := make([]byte, 1500)
		for {
			n, from, err := c.ReadFrom(b)
			if err != nil {
				return fail(err)
			}
			if n >= 8 && b[0] == 0 && from.(*net.IPAddr).IP.Equal(dst.IP) && b[4] == 0x12 && b[5] == 0x34 {
				return 0
			}
		}
	case "rawsend":
		ifi, err := net.InterfaceByName(os.Getenv("FCM_TEST_IF"))
		if err != nil {
			return fail(err)
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return fail(err)
		}
		defer unix.Close(fd)
		for _, h := range strings.Split(os.Getenv("FCM_TEST_FRAMES"), ",") {
			frame, err := hex.DecodeString(h)
			if err != nil {
				return fail(err)
			}
			if err := unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}); err != nil {
				return fail(err)
			}
		}
		return 0
	}
	return 2
}

// checksum is the Internet checksum of b.
func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

var broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// arpFrame is an Ethernet/IPv4 ARP packet (op 1 request, 2 reply) from
// srcMAC claiming srcIP, sent to dstMAC.
func arpFrame(op uint16, srcMAC net.HardwareAddr, srcIP netip.Addr, dstMAC net.HardwareAddr, dstIP netip.Addr) []byte {
	tha := dstMAC
	if op == 1 {
		tha = make(net.HardwareAddr, 6)
	}
	return slices.Concat(dstMAC, srcMAC, []byte{0x08, 0x06},
		arpEthIPv4, []byte{byte(op >> 8), byte(op)}, srcMAC, srcIP.AsSlice(), tha, dstIP.AsSlice())
}

// raFrame is an IPv6 router advertisement from srcMAC to all nodes, with a
// high router preference, 30 minutes of router lifetime and an on-link,
// autonomous prefix.
func raFrame(srcMAC net.HardwareAddr, prefix netip.Prefix) []byte {
	src := netip.MustParseAddr("fe80::fc:ff:fe00:a").As16()
	dst := netip.MustParseAddr("ff02::1").As16()
	ra := []byte{134, 0, 0, 0, 64, 0x08, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0}
	ra = append(ra, append([]byte{1, 1}, srcMAC...)...) // source link-layer address
	pfx := prefix.Addr().As16()
	ra = append(ra, 3, 4, byte(prefix.Bits()), 0xc0, 0, 1, 0x51, 0x80, 0, 0, 0x38, 0x40, 0, 0, 0, 0)
	ra = append(ra, pfx[:]...)
	pseudo := slices.Concat(src[:], dst[:], []byte{0, 0, byte(len(ra) >> 8), byte(len(ra)), 0, 0, 0, 58}, ra)
	binary.BigEndian.PutUint16(ra[2:], checksum(pseudo))
	ip6 := []byte{0x60, 0, 0, 0, byte(len(ra) >> 8), byte(len(ra)), 58, 255}
	ip6 = slices.Concat(ip6, src[:], dst[:])
	return slices.Concat(net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}, srcMAC, []byte{0x86, 0xdd}, ip6, ra)
}

// sendFrames sends raw frames out of interface dev in namespace ns.
func sendFrames(t *testing.T, ns, dev string, frames ...[]byte) {
	t.Helper()
	var hs []string
	for _, f := range frames {
		hs = append(hs, hex.EncodeToString(f))
	}
	if out, err := helper(ns, "rawsend", "FCM_TEST_IF="+dev, "FCM_TEST_FRAMES="+strings.Join(hs, ",")).CombinedOutput(); err != nil {
		t.Fatalf("send raw frames from %s: %v\n%s", ns, err, out)
	}
}

// udpFrom sends a datagram from namespace ns to dst and returns the answer.
func udpFrom(ns, dst string) (string, error) {
	out, err := helper(ns, "udp", "FCM_TEST_DST="+dst).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// pingFrom reports whether dst answers an ICMP echo request from namespace ns.
func pingFrom(ns, dst string) error {
	out, err := helper(ns, "ping", "FCM_TEST_DST="+dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}
