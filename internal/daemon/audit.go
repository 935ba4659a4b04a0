package daemon

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/metrics"
	"github.com/fcmhost/fcm/internal/store"
)

// auditNote is what a handler adds to its request's audit event: the VM it
// made (a create's name is known only then), names of what it changed, and
// the error a streamed answer carried in its body.
type auditNote struct {
	vm     *store.VM
	detail string
	err    error
	action string // what the request turned out to be, when not the route's
}

// noteDetail sets r's audit detail, if the route records one.
func noteDetail(r *http.Request, detail string) {
	if n := noteOf(r); n != nil {
		n.detail = detail
	}
}

type auditKey struct{}

// noteOf is r's audit note, nil when the route records none.
func noteOf(r *http.Request) *auditNote {
	n, _ := r.Context().Value(auditKey{}).(*auditNote)
	return n
}

// audited records one event for each request of a route with an audit
// action, after it is answered: who (the token's person, or admin), from
// where, what, on which VM, and how it went.
func (s *Server) audited(action string, tok *store.Token, w http.ResponseWriter, r *http.Request, h func(http.ResponseWriter, *http.Request)) {
	note := &auditNote{}
	r = r.WithContext(context.WithValue(r.Context(), auditKey{}, note))
	h(w, r)
	if note.action != "" {
		action = note.action
	}
	e := &store.AuditEvent{At: time.Now().UTC(), Who: s.whoName(tok), From: clientAddr(r), Action: action, Detail: note.detail, Result: "ok"}
	v := note.vm
	if v == nil {
		v, _ = r.Context().Value(vmKey{}).(*store.VM)
	}
	if v != nil {
		e.VM, e.VMID, e.Owner = v.Name, v.ID, v.Owner
	} else if name := r.PathValue("name"); name != "" {
		e.VM = name
	}
	if code := statusOf(w); code >= 400 {
		e.Result = "HTTP " + strconv.Itoa(code)
	}
	if note.err != nil {
		e.Result = note.err.Error()
	}
	if err := s.Store.Update(func(tx *store.Tx) error { return tx.AddAuditEvent(e) }); err != nil {
		s.logger().Error("audit trail", "action", action, "err", err)
	}
}

// whoName is how the audit trail names tok's person: their email, or admin.
func (s *Server) whoName(tok *store.Token) string {
	if tok == nil {
		return ""
	}
	if tok.User == "" {
		return "admin"
	}
	var who string
	s.Store.View(func(tx *store.Tx) error {
		if u, err := tx.User(tok.User); err == nil {
			who = u.Email
		}
		return nil
	})
	if who == "" {
		who = tok.User
	}
	return who
}

// statusOf is the status w was answered with (the request log's writer
// records it), 200 if unknown.
func statusOf(w http.ResponseWriter) int {
	for rw := w; rw != nil; {
		if sw, ok := rw.(*statusWriter); ok {
			return sw.status
		}
		u, ok := rw.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			break
		}
		rw = u.Unwrap()
	}
	return http.StatusOK
}

// listEvents is GET /v1/events[?vm=name][&since=1h][&after=seq]: the audit
// trail, oldest first, at most 1,000: the admin's all of it; a person's, the
// events of their VMs and their own.
func (s *Server) listEvents(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	q := r.URL.Query()
	var after uint64
	if a := q.Get("after"); a != "" {
		n, err := strconv.ParseUint(a, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, api.CodeBadRequest, "after: want an event's seq")
			return
		}
		after = n
	}
	var since time.Time
	if d := q.Get("since"); d != "" {
		dur, err := time.ParseDuration(d)
		if err != nil || dur <= 0 {
			writeError(w, http.StatusBadRequest, api.CodeBadRequest, "since: want a duration such as 10m, 1h or 48h")
			return
		}
		since = time.Now().Add(-dur)
	}
	vmName := q.Get("vm")
	me := s.whoName(tok)
	out := []store.AuditEvent{}
	err := s.Store.View(func(tx *store.Tx) error {
		return tx.AuditEvents(after, func(e *store.AuditEvent) bool {
			mine := tok.Admin || (e.Owner != "" && e.Owner == tok.Owner()) || (e.VMID == "" && e.Who == me)
			if mine && (vmName == "" || e.VM == vmName) && !e.At.Before(since) {
				out = append(out, *e)
				if len(out) > 1000 {
					out = out[1:]
				}
			}
			return true
		})
	})
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// auditAction names the change a route makes, "" for one that makes none.
func auditAction(pattern string) string {
	method, path, _ := strings.Cut(pattern, " ")
	if method == "GET" || method == "HEAD" || path == "" {
		return ""
	}
	return auditActions[pattern]
}

// auditActions are the API's changes, by route.
var auditActions = map[string]string{
	"POST /v1/vms":                           "create",
	"DELETE /v1/vms/{name}":                  "destroy",
	"POST /v1/vms/{name}/start":              "start",
	"POST /v1/vms/{name}/stop":               "stop",
	"POST /v1/vms/{name}/suspend":            "suspend",
	"POST /v1/vms/{name}/resume":             "resume",
	"PATCH /v1/vms/{name}":                   "update",
	"POST /v1/vms/{name}/rollback":           "rollback",
	"PATCH /v1/vms/{name}/config":            "config",
	"POST /v1/vms/{name}/restart":            "restart",
	"POST /v1/vms/{name}/checkpoints":        "checkpoint",
	"DELETE /v1/vms/{name}/checkpoints/{id}": "checkpoint rm",
	"POST /v1/vms/{name}/restore":            "restore",
	"POST /v1/vms/{name}/fork":               "fork",
	"POST /v1/vms/{name}/domains":            "domain add",
	"DELETE /v1/vms/{name}/domains/{domain}": "domain rm",
	"POST /v1/keys":                          "key add",
	"DELETE /v1/keys/{fingerprint...}":       "key rm",
	"DELETE /v1/tokens/{id}":                 "token revoke",
	"POST /v1/tokens/admin/rotate":           "admin token rotate",
	"POST /v1/users/allow":                   "users allow",
	"POST /v1/users/deny":                    "users deny",
	"DELETE /v1/users/{user}":                "users rm",
	"POST /logout":                           "logout",
}

// configNames says what a config change sets and unsets, by name only.
func configNames(c api.ConfigChange) string {
	var set []string
	for k := range c.Set {
		set = append(set, k)
	}
	slices.Sort(set)
	var parts []string
	if len(set) > 0 {
		parts = append(parts, "set "+strings.Join(set, ", "))
	}
	if len(c.Unset) > 0 {
		parts = append(parts, "unset "+strings.Join(c.Unset, ", "))
	}
	return strings.Join(parts, "; ")
}

// deployed records a git push's deploy in the metrics and the audit trail.
func (s *Server) deployed(v *store.VM, user string, version int, commit string, err error, took time.Duration) {
	s.Metrics.Deploy(err == nil)
	s.Metrics.Observe(metrics.OpDeploy, took.Seconds())
	e := &store.AuditEvent{At: time.Now().UTC(), Who: user, Action: "deploy", VM: v.Name, VMID: v.ID, Owner: v.Owner,
		Detail: fmt.Sprintf("v%d of %.7s", version, commit), Result: "ok"}
	if err != nil {
		e.Result = err.Error()
	}
	if err := s.Store.Update(func(tx *store.Tx) error { return tx.AddAuditEvent(e) }); err != nil {
		s.logger().Error("audit trail", "action", "deploy", "err", err)
	}
}
