package auth

import (
	"net"
	"sync"
	"time"
)

// The public login endpoints' rate per client address: a burst of
// limitBurst requests, then one every limitEvery. A person's login takes
// three or four; a flood from one address gets 429s.
const (
	limitBurst   = 20
	limitEvery   = 3 * time.Second
	limitMaxKeys = 50000 // addresses tracked at once, before idle ones are forgotten
)

// limiter is a token bucket per client address (IPv6 per /64, what one
// client usually holds).
type limiter struct {
	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter() *limiter { return &limiter{buckets: map[string]*bucket{}} }

// allow takes one request from addr's bucket, reporting whether there was one.
func (l *limiter) allow(addr string, now time.Time) bool {
	key := limitKey(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= limitMaxKeys {
			l.forgetIdle(now)
		}
		b = &bucket{tokens: limitBurst, last: now}
		l.buckets[key] = b
	}
	b.tokens = min(limitBurst, b.tokens+float64(now.Sub(b.last))/float64(limitEvery))
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// forgetIdle drops the buckets that are full again (they say nothing); if
// that is not enough, all of them. l.mu is held.
func (l *limiter) forgetIdle(now time.Time) {
	full := time.Duration(limitBurst) * limitEvery
	for k, b := range l.buckets {
		if now.Sub(b.last) >= full {
			delete(l.buckets, k)
		}
	}
	if len(l.buckets) >= limitMaxKeys {
		clear(l.buckets)
	}
}

// limitKey is the bucket of addr: an IPv4 address itself, an IPv6 one's /64.
func limitKey(addr string) string {
	ip := net.ParseIP(addr)
	if ip == nil || ip.To4() != nil {
		return addr
	}
	return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
}
