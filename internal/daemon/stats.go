package daemon

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/disk"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/usage"
)

// DiskPather says where a VM's own disk is (for its usage).
type DiskPather interface {
	DiskPath(id string) string
}

// usageTarget is what the sampler reads of VM v.
func (s *Server) usageTarget(v *store.VM) usage.Target {
	t := usage.Target{ID: v.ID, Tap: v.Tap}
	if dp, ok := s.VMs.(DiskPather); ok {
		t.Disk = dp.DiskPath(v.ID)
	}
	return t
}

// sampleUsage samples the running VMs' usage into s.Usage until ctx ends.
func (s *Server) sampleUsage(ctx context.Context) {
	s.Usage.Run(ctx, func() []usage.Target {
		vms, _ := s.Store.ListVMs()
		var out []usage.Target
		for _, v := range vms {
			if v.State == api.StateRunning {
				out = append(out, s.usageTarget(v))
			}
		}
		return out
	})
}

// vmStats is GET /v1/vms/{name}/stats. A running VM is read twice, a second
// apart, for its CPU use now.
func (s *Server) vmStats(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	v, ok := s.lookup(w, r, tok)
	if !ok {
		return
	}
	out := api.VMStats{Name: v.Name, State: v.State, CPUs: v.CPUs, MemorySizeBytes: int64(v.MemoryMiB) << 20, DiskSizeBytes: v.DiskBytes, History: []api.StatsPoint{}}
	t := s.usageTarget(v)
	if v.State == api.StateRunning {
		if a, err := usage.Read(t); err == nil {
			select {
			case <-time.After(time.Second):
			case <-r.Context().Done():
				return
			}
			if b, err := usage.Read(t); err == nil {
				if wall := b.At.Sub(a.At).Seconds(); wall > 0 && b.CPUSeconds >= a.CPUSeconds {
					out.CPUPercent = 100 * (b.CPUSeconds - a.CPUSeconds) / wall
				}
				out.MemoryBytes, out.NetworkIn, out.NetworkOut = b.MemoryBytes, b.RxBytes, b.TxBytes
			}
		}
		if up, err := processUptime(v.PID); err == nil {
			out.Uptime = up.Round(time.Second).Seconds()
		}
	}
	if t.Disk != "" {
		out.DiskBytes = diskAllocated(t.Disk)
	}
	if s.Usage != nil {
		for _, p := range s.Usage.History(v.ID) {
			out.History = append(out.History, api.StatsPoint{At: p.At, CPUPercent: p.CPUPercent, MemoryBytes: p.MemoryBytes})
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// diskAllocated is what a disk file takes on the host, 0 if unknown.
func diskAllocated(path string) int64 {
	n, _ := disk.Allocated(path)
	return n
}

// processUptime is how long process pid has run: /proc/uptime less its
// start time in /proc/<pid>/stat (clock ticks since boot, 100 a second).
func processUptime(pid int) (time.Duration, error) {
	if pid <= 0 {
		return 0, os.ErrNotExist
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// Fields after the command, which is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(stat), ')')
	f := strings.Fields(string(stat)[i+1:])
	if i < 0 || len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, stat)
	}
	ticks, err := strconv.ParseFloat(f[19], 64) // field 22, starttime
	if err != nil {
		return 0, err
	}
	up, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0, err
	}
	secs, err := strconv.ParseFloat(strings.Fields(string(up))[0], 64)
	if err != nil {
		return 0, err
	}
	return time.Duration((secs - ticks/100) * float64(time.Second)), nil
}

// Chart size of the VM page's last hour, in SVG units: a point every 10 s.
const chartWidth, chartHeight = 360, 60

// usageView is VM v's usage for its page, nil when it is not running or has
// no sample yet.
func (s *Server) usageView(v *store.VM) *usageView {
	if s.Usage == nil || v.State != api.StateRunning {
		return nil
	}
	smp, cpu, ok := s.Usage.Latest(v.ID)
	if !ok {
		return nil
	}
	u := &usageView{CPUPercent: cpu, Memory: smp.MemoryBytes, MemorySize: int64(v.MemoryMiB) << 20, Disk: smp.DiskBytes,
		DiskSize: v.DiskBytes, In: smp.RxBytes, Out: smp.TxBytes, ChartWidth: chartWidth, ChartHeight: chartHeight, ChartMid: chartHeight / 2}
	hist := s.Usage.History(v.ID)
	u.Samples = len(hist)
	if len(hist) == 0 {
		return u
	}
	end := hist[len(hist)-1].At
	point := func(at time.Time, frac float64) string {
		x := float64(chartWidth) - end.Sub(at).Seconds()/time.Hour.Seconds()*chartWidth
		y := float64(chartHeight) * (1 - min(max(frac, 0), 1))
		return fmt.Sprintf("%.1f,%.1f", x, y)
	}
	var cpuPts, memPts []string
	full := float64(100 * max(v.CPUs, 1))
	for _, p := range hist {
		cpuPts = append(cpuPts, point(p.At, p.CPUPercent/full))
		memPts = append(memPts, point(p.At, float64(p.MemoryBytes)/float64(max(u.MemorySize, 1))))
	}
	u.CPUPoints, u.MemoryPoints = strings.Join(cpuPts, " "), strings.Join(memPts, " ")
	return u
}
