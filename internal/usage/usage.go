// Package usage samples what each running VM uses (CPU time and host memory
// from its cgroup, network bytes from its tap, disk from its own disk's
// allocated blocks) at a fixed interval, and keeps the last hour of samples
// per VM in memory (a ring), for fcm stats and the status page's charts.
package usage

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fcmhost/fcm/internal/cgroup"
	"github.com/fcmhost/fcm/internal/disk"
)

// Target is a running VM to sample.
type Target struct {
	ID, Tap string
	Disk    string // its own disk's file
}

// Sample is one reading of a VM.
type Sample struct {
	At          time.Time
	CPUSeconds  float64 // since its hypervisor started
	MemoryBytes int64   // host memory its hypervisor holds
	RxBytes     int64   // received by the VM (its tap's transmit)
	TxBytes     int64   // sent by the VM
	DiskBytes   int64   // its disk's allocated blocks
}

// Point is one point of a VM's history: CPU use over the interval before it
// (100 is one vCPU busy), and memory then.
type Point struct {
	At          time.Time
	CPUPercent  float64
	MemoryBytes int64
}

// Sampler keeps each VM's samples.
type Sampler struct {
	Interval time.Duration // between samples; 0: DefaultInterval
	Keep     time.Duration // history kept; 0: an hour

	mu    sync.Mutex
	rings map[string][]Sample // vm id -> samples, oldest first
}

// DefaultInterval is how often a running VM is sampled.
const DefaultInterval = 10 * time.Second

// Read samples VM t now.
func Read(t Target) (Sample, error) {
	s := Sample{At: time.Now()}
	u, err := cgroup.ReadUsage(t.ID)
	if err != nil {
		return s, err
	}
	s.CPUSeconds, s.MemoryBytes = u.CPUSeconds, u.MemoryBytes
	s.RxBytes, _ = tapCounter(t.Tap, "tx_bytes")
	s.TxBytes, _ = tapCounter(t.Tap, "rx_bytes")
	s.DiskBytes, _ = disk.Allocated(t.Disk)
	return s, nil
}

func tapCounter(tap, counter string) (int64, error) {
	if tap == "" || strings.ContainsAny(tap, "/.") {
		return 0, os.ErrNotExist
	}
	data, err := os.ReadFile(filepath.Join("/sys/class/net", tap, "statistics", counter))
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
}

// Run samples the VMs list returns every Interval until ctx ends, dropping
// the history of VMs no longer listed.
func (s *Sampler) Run(ctx context.Context, list func() []Target) {
	t := time.NewTicker(s.interval())
	defer t.Stop()
	for {
		s.SampleAll(list())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// SampleAll takes one sample of each target and forgets the others.
func (s *Sampler) SampleAll(targets []Target) {
	seen := map[string]bool{}
	for _, t := range targets {
		seen[t.ID] = true
		if smp, err := Read(t); err == nil {
			s.Add(t.ID, smp)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id := range s.rings {
		if !seen[id] {
			delete(s.rings, id)
		}
	}
}

// Add records a sample of VM id, dropping those older than Keep.
func (s *Sampler) Add(id string, smp Sample) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rings == nil {
		s.rings = map[string][]Sample{}
	}
	ring := append(s.rings[id], smp)
	cut := 0
	for cut < len(ring)-1 && smp.At.Sub(ring[cut].At) > s.keep() {
		cut++
	}
	s.rings[id] = append(ring[:0:0], ring[cut:]...)
}

// Latest is VM id's newest sample and its CPU use since the one before
// (ok is false before the first sample).
func (s *Sampler) Latest(id string) (smp Sample, cpuPercent float64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ring := s.rings[id]
	if len(ring) == 0 {
		return Sample{}, 0, false
	}
	smp = ring[len(ring)-1]
	if len(ring) > 1 {
		cpuPercent = percent(ring[len(ring)-2], smp)
	}
	return smp, cpuPercent, true
}

// History is VM id's points, oldest first.
func (s *Sampler) History(id string) []Point {
	s.mu.Lock()
	defer s.mu.Unlock()
	ring := s.rings[id]
	var out []Point
	for i := 1; i < len(ring); i++ {
		out = append(out, Point{At: ring[i].At, CPUPercent: percent(ring[i-1], ring[i]), MemoryBytes: ring[i].MemoryBytes})
	}
	return out
}

// percent is the CPU use between two samples: 100 is one CPU busy.
func percent(a, b Sample) float64 {
	wall := b.At.Sub(a.At).Seconds()
	if wall <= 0 || b.CPUSeconds < a.CPUSeconds {
		return 0 // a restart in between: its counter began again
	}
	return 100 * (b.CPUSeconds - a.CPUSeconds) / wall
}

func (s *Sampler) interval() time.Duration {
	if s.Interval > 0 {
		return s.Interval
	}
	return DefaultInterval
}

func (s *Sampler) keep() time.Duration {
	if s.Keep > 0 {
		return s.Keep
	}
	return time.Hour
}
