package main

import (
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// stageLine matches a boot stage the guest prints on its console:
// "fcm-initrd: boot 1.234s modules", "fcm-init: boot 1.9s sshd started". The
// number is seconds since the kernel started (CLOCK_BOOTTIME).
var stageLine = regexp.MustCompile(`fcm-init(?:rd)?: boot ([0-9]+(?:\.[0-9]+)?)s ([a-z ]+?)\s*$`)

// parseStages returns the guest uptime at each stage line of a console log
// (the first line of each name).
func parseStages(console string) map[string]time.Duration {
	up := map[string]time.Duration{}
	for _, line := range strings.Split(console, "\n") {
		m := stageLine.FindStringSubmatch(strings.TrimRight(line, "\r"))
		if m == nil {
			continue
		}
		if _, ok := up[m[2]]; ok {
			continue
		}
		s, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			continue
		}
		up[m[2]] = time.Duration(s * float64(time.Second))
	}
	return up
}

// consoleWatch polls a console log while a guest boots and notes, on the
// host's clock, when each stage line first appears in it: with the guest
// uptime the line carries, that places the kernel's start on the host clock.
type consoleWatch struct {
	path  string
	start time.Time
	stop  chan struct{}
	done  chan struct{}

	mu   sync.Mutex
	seen map[string]time.Duration // stage -> when it appeared, since start
	up   map[string]time.Duration // stage -> guest uptime it carries
}

// watchConsole starts polling path every few milliseconds; start is the
// instant the hypervisor was started.
func watchConsole(path string, start time.Time) *consoleWatch {
	w := &consoleWatch{path: path, start: start, stop: make(chan struct{}), done: make(chan struct{}),
		seen: map[string]time.Duration{}}
	go func() {
		defer close(w.done)
		for {
			w.poll()
			select {
			case <-w.stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *consoleWatch) poll() {
	data, err := os.ReadFile(w.path)
	if err != nil {
		return
	}
	now := time.Since(w.start)
	up := parseStages(string(data))
	w.mu.Lock()
	defer w.mu.Unlock()
	for name := range up {
		if _, ok := w.seen[name]; !ok {
			w.seen[name] = now
		}
	}
	w.up = up
}

// finish stops polling, reads the log a last time and returns the stages'
// guest uptimes and the kernel's start on the host clock (since start): the
// earliest of (when a line appeared - the uptime it carries). Each is an upper
// bound (a line appears a little after it is printed), so the earliest is the
// tightest; 0 when no stage line was seen.
func (w *consoleWatch) finish() (up map[string]time.Duration, kernel time.Duration) {
	close(w.stop)
	<-w.done
	w.poll()
	w.mu.Lock()
	defer w.mu.Unlock()
	first := true
	for name, seen := range w.seen {
		if k := seen - w.up[name]; first || k < kernel {
			kernel, first = k, false
		}
	}
	return w.up, kernel
}

// bootStage is one row of the boot stages table: from one console stage to
// the next, and whose time it is.
type bootStage struct {
	name, whose string
	fcm         bool // fcm's own code: the part fcm can cut
	get         func(bootSample) (time.Duration, bool)
}

// between is a stage from the guest uptime at console stage a ("" is the
// kernel's start) to that at b.
func between(a, b string) func(bootSample) (time.Duration, bool) {
	return func(s bootSample) (time.Duration, bool) {
		from, ok := s.stages[a]
		if a == "" {
			from, ok = 0, true
		}
		to, ok2 := s.stages[b]
		return to - from, ok && ok2
	}
}

var bootStages = []bootStage{
	{"hypervisor start -> kernel start", "host/TCG (QEMU, firmware, kernel load)", false,
		func(s bootSample) (time.Duration, bool) { return s.kernelStart, s.kernelStart > 0 }},
	{"kernel start -> initrd", "kernel", false, between("", "initrd")},
	{"initrd: modules", "fcm initrd", true, between("initrd", "modules")},
	{"initrd: root mount (overlay)", "fcm initrd", true, between("modules", "root mounted")},
	{"root mounted -> fcm-init running", "switch_root, exec, Go start-up", true, between("root mounted", "started")},
	{"fcm-init: mounts", "fcm-init", true, between("started", "init")},
	{"fcm-init -> network (config drive, keys)", "fcm-init", true, between("init", "network")},
	{"network -> sshd started (swap, host key)", "fcm-init", true, between("network", "sshd started")},
	{"sshd started -> listening", "sshd", false, between("sshd started", "sshd listening")},
	{"listening -> host sees SSH banner", "sshd (fork, re-exec per connection), host/TCG", false, func(s bootSample) (time.Duration, bool) {
		l, ok := s.stages["sshd listening"]
		return s.banner - s.kernelStart - l, ok && s.kernelStart > 0
	}},
}

// fcmShare is the sum of the fcm stages of one boot.
func fcmShare(s bootSample) (time.Duration, bool) {
	var sum time.Duration
	for _, st := range bootStages {
		if !st.fcm {
			continue
		}
		d, ok := st.get(s)
		if !ok {
			return 0, false
		}
		sum += d
	}
	return sum, true
}

// medianOf returns the median, minimum and maximum of get over the samples
// that have it, and how many did.
func medianOf(samples []bootSample, get func(bootSample) (time.Duration, bool)) (med, lo, hi time.Duration, n int) {
	var v []time.Duration
	for _, s := range samples {
		if d, ok := get(s); ok {
			v = append(v, d)
		}
	}
	if len(v) == 0 {
		return 0, 0, 0, 0
	}
	slices.Sort(v)
	return v[len(v)/2], v[0], v[len(v)-1], len(v)
}

// printBootStages prints where the boots' time went, from the console's stage
// lines, fcm's own stages marked with *.
func printBootStages(w io.Writer, samples []bootSample, accel string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "BOOT STAGE (%s)\tWHOSE\tMEDIAN\tMIN\tMAX\n", accel)
	ms := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	for _, st := range bootStages {
		mark := " "
		if st.fcm {
			mark = "*"
		}
		med, lo, hi, n := medianOf(samples, st.get)
		if n == 0 {
			fmt.Fprintf(tw, "%s %s\t%s\t-\t-\t-\n", mark, st.name, st.whose)
			continue
		}
		fmt.Fprintf(tw, "%s %s\t%s\t%s\t%s\t%s\n", mark, st.name, st.whose, ms(med), ms(lo), ms(hi))
	}
	med, lo, hi, _ := medianOf(samples, func(s bootSample) (time.Duration, bool) { return s.banner, true })
	fmt.Fprintf(tw, "  hypervisor start -> SSH banner (total)\t\t%s\t%s\t%s\n", ms(med), ms(lo), ms(hi))
	if med, lo, hi, n := medianOf(samples, fcmShare); n > 0 {
		fmt.Fprintf(tw, "* fcm's own share (sum of * per boot)\tfcm\t%s\t%s\t%s\n", ms(med), ms(lo), ms(hi))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, `(stages from the guest's console lines "fcm-initrd:/fcm-init: boot <uptime>s <stage>", uptime = CLOCK_BOOTTIME
 since the kernel started. Kernel start on the host clock = the earliest (host time a stage line appeared in
 console.log, polled every 2 ms) - (the uptime it carries), an upper bound off by about the poll interval:
 "hypervisor start -> kernel start" runs from just before the driver's Start call to it (QEMU's exec, firmware,
 kernel load and early boot until its clock starts). "listening -> banner" is the host's time to the banner
 minus that and the guest's uptime at "sshd listening" (fcm-init notes it at sshd's own "Server listening" log
 line; the host dials every 20 ms and waits for the banner sshd sends from a fresh re-exec'd process).
 The two together are host wall time to the banner minus the guest uptime at "sshd listening".
 * = fcm's own code (initrd script, fcm-init): the part fcm can cut. Medians are per row, so rows need not add up.)
`)
	return err
}
