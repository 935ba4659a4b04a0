package usage

import (
	"math"
	"testing"
	"time"
)

// TestSampler: CPU use is the CPU seconds between samples over the wall time
// (100 per busy CPU), a counter that began again reads 0, history is kept
// for Keep and a VM no longer listed is forgotten.
func TestSampler(t *testing.T) {
	s := &Sampler{Keep: time.Minute}
	t0 := time.Unix(1_800_000_000, 0)
	for i, cpu := range []float64{10, 20, 25, 1} {
		s.Add("a", Sample{At: t0.Add(time.Duration(i) * 10 * time.Second), CPUSeconds: cpu, MemoryBytes: int64(i) << 20})
	}
	h := s.History("a")
	if len(h) != 3 || math.Abs(h[0].CPUPercent-100) > 0.01 || math.Abs(h[1].CPUPercent-50) > 0.01 || h[2].CPUPercent != 0 {
		t.Errorf("history: %+v", h)
	}
	if smp, cpu, ok := s.Latest("a"); !ok || smp.MemoryBytes != 3<<20 || cpu != 0 {
		t.Errorf("latest: %+v %v %v", smp, cpu, ok)
	}
	s.Add("a", Sample{At: t0.Add(2 * time.Minute), CPUSeconds: 5})
	if h := s.History("a"); len(h) != 0 {
		t.Errorf("after two minutes, with a minute kept: %+v", h)
	}
	if _, _, ok := s.Latest("b"); ok {
		t.Error("a VM never sampled has a sample")
	}
	s.SampleAll(nil)
	if _, _, ok := s.Latest("a"); ok {
		t.Error("a VM no longer running keeps its samples")
	}
}
