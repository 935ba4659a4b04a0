package console

import (
	"bytes"
	"testing"
)

func TestRing(t *testing.T) {
	r := newRing(8)
	var all []byte
	for i := 0; i < 30; i++ {
		chunk := bytes.Repeat([]byte{byte('a' + i%26)}, i%5+1)
		r.write(chunk)
		all = append(all, chunk...)
		if r.total != int64(len(all)) {
			t.Fatalf("total %d, want %d", r.total, len(all))
		}
		// Every held offset reads back exactly what was written from there on.
		for off := r.start(); off <= r.total; off++ {
			p := make([]byte, 16)
			n := r.read(off, p)
			if !bytes.Equal(p[:n], all[off:]) {
				t.Fatalf("after %d bytes, read(%d) = %q, want %q", len(all), off, p[:n], all[off:])
			}
		}
	}
	if r.holds(r.start()-1) || !r.holds(r.start()) || !r.holds(r.total) || r.holds(r.total+1) {
		t.Errorf("holds is wrong around [%d, %d]", r.start(), r.total)
	}
	// A short buffer gets the oldest part first.
	p := make([]byte, 3)
	if n := r.read(r.start(), p); n != 3 || !bytes.Equal(p, all[r.start():r.start()+3]) {
		t.Errorf("short read %q", p[:n])
	}
}
