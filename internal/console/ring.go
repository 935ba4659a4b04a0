package console

// ring holds the most recent output of a session, addressed by absolute offsets
// (bytes since the hub began), so a client that reconnects can ask for exactly
// what it missed.
type ring struct {
	buf   []byte
	total int64 // bytes ever written
}

func newRing(size int) ring { return ring{buf: make([]byte, size)} }

func (r *ring) write(p []byte) {
	for len(p) > 0 {
		i := int(r.total % int64(len(r.buf)))
		n := copy(r.buf[i:], p)
		p = p[n:]
		r.total += int64(n)
	}
}

// start is the oldest offset still held.
func (r *ring) start() int64 { return max(0, r.total-int64(len(r.buf))) }

// holds says whether the bytes from off to the end are all still held.
func (r *ring) holds(off int64) bool { return off >= r.start() && off <= r.total }

// read copies the bytes from off (which must be held) into p.
func (r *ring) read(off int64, p []byte) int {
	n := 0
	for n < len(p) && off < r.total {
		i := int(off % int64(len(r.buf)))
		end := min(len(r.buf), i+int(r.total-off))
		c := copy(p[n:], r.buf[i:end])
		n += c
		off += int64(c)
	}
	return n
}
