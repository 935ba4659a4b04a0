package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"time"
)

// The audit trail: every change anyone makes, once, in the order made.
var bucketEvents = []byte("audit") // 8-byte big-endian sequence -> AuditEvent

// Bounds of the audit trail: the newest MaxAuditEvents, none older than
// AuditAge.
const (
	MaxAuditEvents = 100_000
	AuditAge       = 90 * 24 * time.Hour
)

// AuditEvent is one change: who made it, from where, when, what and how it went.
type AuditEvent struct {
	Seq    uint64    `json:"seq"`
	At     time.Time `json:"at"`
	Who    string    `json:"who"`            // the person's email, or "admin"
	From   string    `json:"from,omitempty"` // their address
	Action string    `json:"action"`         // create, destroy, deploy, config set, login, ...
	VM     string    `json:"vm,omitempty"`   // the VM's name then
	VMID   string    `json:"vm_id,omitempty"`
	Owner  string    `json:"owner,omitempty"` // the VM's owner (user id): who may read it
	Detail string    `json:"detail,omitempty"`
	Result string    `json:"result"` // "ok", or what went wrong
}

// AddAuditEvent appends e, numbering it, and drops the events beyond the bounds
// (at most a few at a time: appends keep it bounded).
func (t *Tx) AddAuditEvent(e *AuditEvent) error {
	b := t.tx.Bucket(bucketEvents)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	e.Seq = seq
	data, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if err := b.Put(eventKey(seq), data); err != nil {
		return err
	}
	c := b.Cursor()
	for i, k, v := 0, []byte(nil), []byte(nil); i < 4; i++ {
		k, v = c.First()
		if k == nil || binary.BigEndian.Uint64(k) == seq {
			break
		}
		var old AuditEvent
		tooOld := json.Unmarshal(v, &old) == nil && e.At.Sub(old.At) > AuditAge
		// Keys are consecutive: only the oldest are ever removed.
		if seq-binary.BigEndian.Uint64(k)+1 <= MaxAuditEvents && !tooOld {
			break
		}
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

func eventKey(seq uint64) []byte {
	k := make([]byte, 8)
	binary.BigEndian.PutUint64(k, seq)
	return k
}

// AuditEvents calls fn with the events after seq (0: from the first), oldest
// first, until fn returns false.
func (t *Tx) AuditEvents(after uint64, fn func(*AuditEvent) bool) error {
	c := t.tx.Bucket(bucketEvents).Cursor()
	for k, v := c.Seek(eventKey(after + 1)); k != nil; k, v = c.Next() {
		if bytes.Equal(k, eventKey(after)) {
			continue
		}
		var e AuditEvent
		if err := json.Unmarshal(v, &e); err != nil {
			return err
		}
		if !fn(&e) {
			return nil
		}
	}
	return nil
}
