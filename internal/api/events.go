package api

import "time"

// AuditEvent is one change in the audit trail (GET /v1/events): who made it
// (an email, or admin), from where, when, what, on which VM, and how it went
// ("ok", or what went wrong). A person reads the events of their VMs and
// their own; the admin all. Query: vm=<name>, since=<duration>,
// after=<seq> (the events after that one).
type AuditEvent struct {
	Seq    uint64    `json:"seq"`
	At     time.Time `json:"at"`
	Who    string    `json:"who"`
	From   string    `json:"from,omitempty"`
	Action string    `json:"action"`
	VM     string    `json:"vm,omitempty"`
	Detail string    `json:"detail,omitempty"`
	Result string    `json:"result"`
}
