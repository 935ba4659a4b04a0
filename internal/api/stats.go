package api

import "time"

// VMStats is GET /v1/vms/{name}/stats: what a VM uses now, and its last
// hour (fcm stats, the status page). CPU is measured over the second the
// request takes; 100 is one vCPU busy. Memory is the host memory its
// hypervisor holds (guest RAM it touched included), disk its own disk's
// allocated blocks, network what it received and sent since it booted.
type VMStats struct {
	Name            string       `json:"name"`
	State           string       `json:"state"`
	Uptime          float64      `json:"uptime_seconds,omitempty"`
	CPUs            int          `json:"cpus"`
	CPUPercent      float64      `json:"cpu_percent"`
	MemoryBytes     int64        `json:"memory_bytes"`
	MemorySizeBytes int64        `json:"memory_size_bytes"`
	DiskBytes       int64        `json:"disk_bytes"`
	DiskSizeBytes   int64        `json:"disk_size_bytes"`
	NetworkIn       int64        `json:"network_in_bytes"`
	NetworkOut      int64        `json:"network_out_bytes"`
	History         []StatsPoint `json:"history"`
}

// StatsPoint is one sample of a VM's last hour (every 10 s).
type StatsPoint struct {
	At          time.Time `json:"at"`
	CPUPercent  float64   `json:"cpu_percent"`
	MemoryBytes int64     `json:"memory_bytes"`
}
