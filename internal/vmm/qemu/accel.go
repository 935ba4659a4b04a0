package qemu

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// ProbeAccel decides between KVM and TCG. /dev/kvm alone is not trusted: on some
// nested hosts it opens and creates VMs whose guests never boot. KVM is used only
// when the CPU advertises vmx or svm and the vendor module (kvm_intel, kvm_amd)
// is loaded; the reason is returned for the log.
func ProbeAccel() (Accel, string) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return TCG, "/dev/kvm is not usable (" + err.Error() + ")"
	}
	f.Close()
	flags := cpuFlags()
	if !flags["vmx"] && !flags["svm"] {
		return TCG, "/dev/kvm exists but the CPU has no vmx/svm flag (nested KVM that cannot boot ordinary guests)"
	}
	for _, m := range []string{"kvm_intel", "kvm_amd"} {
		if _, err := os.Stat("/sys/module/" + m); err == nil {
			return KVM, "/dev/kvm with " + m
		}
	}
	return TCG, "/dev/kvm exists but neither kvm_intel nor kvm_amd is loaded"
}

func cpuFlags() map[string]bool {
	flags := map[string]bool{}
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return flags
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "flags" {
			for _, fl := range strings.Fields(v) {
				flags[fl] = true
			}
			break
		}
	}
	return flags
}

// HostTSCKHz reads the host's TSC rate from /proc/cpuinfo ("cpu MHz", which is the
// TSC rate on CPUs with constant_tsc). Under TCG the guest reads the host's TSC.
func HostTSCKHz() int {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return 0
			}
			return int(mhz * 1000)
		}
	}
	return 0
}
