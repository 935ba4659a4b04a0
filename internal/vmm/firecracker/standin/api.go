package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"

	"github.com/fcmhost/fcm/internal/vmm"
	"github.com/fcmhost/fcm/internal/vmm/qemu"
)

// Firecracker's fault messages that clients may match on.
const (
	msgAfterStart  = "The requested operation is not supported after starting the microVM."
	msgBeforeStart = "The requested operation is not supported before starting the microVM."
	msgIDMismatch  = "The id from the path does not match the id from the body!"
	msgNoKernel    = "Cannot start microvm without kernel configuration."
)

// handler serves one implemented operation; a nil result means 204.
type handler func(a *api, params map[string]string, body []byte) (any, error)

// handlers are the operations the stand-in implements, keyed "METHOD template".
// Every other operation of the spec is validated, then refused.
var handlers = map[string]handler{
	"GET /":                              (*api).getInstance,
	"GET /version":                       (*api).getVersion,
	"GET /machine-config":                (*api).getMachineConfig,
	"PUT /boot-source":                   (*api).putBootSource,
	"PUT /drives/{drive_id}":             (*api).putDrive,
	"PUT /machine-config":                (*api).putMachineConfig,
	"PUT /network-interfaces/{iface_id}": (*api).putNetworkInterface,
	"PUT /actions":                       (*api).putAction,
	"PATCH /vm":                          (*api).patchVM,
	"PUT /snapshot/create":               (*api).createSnapshot,
	"PUT /snapshot/load":                 (*api).loadSnapshot,
}

// notBootPath are the operations that may precede PUT /snapshot/load; any
// other that succeeds puts the process on the boot path.
var notBootPath = map[string]bool{
	"PUT /logger": true, "PUT /metrics": true, "PUT /snapshot/load": true,
}

// api is the stand-in's state: the configuration, then the running VM.
type api struct {
	spec       *apiSpec
	id         string // --id, "" when not given
	sock       string
	record     string // request log (JSON lines)
	maxPayload int64
	exit       func(code int) // cleans up and ends the process

	mu       sync.Mutex // serializes requests, as Firecracker's single API thread does
	started  bool
	bootPath bool // a resource was configured: no snapshot load any more
	paused   bool // PATCH /vm Paused, or loaded without resume_vm
	saved    bool // a snapshot was created since the last resume
	vmspec   vmm.Spec
	accel    qemu.Accel
	memFile  string // the memory file a loaded snapshot's guest memory maps
	boot     *bootSource
	drives   []*drive
	ifaces   []*netIface
	machine  machineConfig
	vm       *vmProcess
}

// record is one line of the request log.
type record struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body"`
	Status int             `json:"status"`
	Fault  *string         `json:"fault"`
}

func (a *api) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, readErr := io.ReadAll(http.MaxBytesReader(w, r.Body, a.maxPayload))
	a.mu.Lock()
	defer a.mu.Unlock()
	status, payload, fault := http.StatusBadRequest, any(nil), ""
	var fatal bool
	if readErr != nil {
		fault = fmt.Sprintf("Request payload is larger than the limit of %d allowed by server: %v", a.maxPayload, readErr)
	} else if result, err := a.handle(r.Method, r.URL.Path, body); err != nil {
		fault = err.Error()
		var fe fatalError
		fatal = errors.As(err, &fe)
	} else if result == nil {
		status = http.StatusNoContent
	} else {
		status, payload = http.StatusOK, result
	}
	if status == http.StatusBadRequest {
		payload = map[string]string{"fault_message": fault}
	}
	a.log(r.Method, r.URL.Path, body, status, fault)
	if payload == nil {
		w.WriteHeader(status)
		return
	}
	data, _ := json.Marshal(payload)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(data)
	if fatal {
		// Answered, then ended, as Firecracker ends after a failed load.
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		logf("%s: exiting", fault)
		a.exit(1)
	}
}

// log appends the request to the record file.
func (a *api) log(method, path string, body []byte, status int, fault string) {
	rec := record{Method: method, Path: path, Status: status, Body: json.RawMessage("null")}
	if t := bytes.TrimSpace(body); len(t) > 0 {
		if json.Valid(t) {
			rec.Body = t
		} else {
			rec.Body, _ = json.Marshal(string(body))
		}
	}
	if fault != "" {
		rec.Fault = &fault
	}
	line, _ := json.Marshal(rec)
	f, err := os.OpenFile(a.record, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		logf("record %s: %v", a.record, err)
		return
	}
	defer f.Close()
	if _, err := f.Write(append(line, '\n')); err != nil {
		logf("record %s: %v", a.record, err)
	}
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)

// handle checks a request against the spec and the microVM's state, then runs
// its handler. A returned error is a 400 with the error as fault_message.
func (a *api) handle(method, path string, body []byte) (any, error) {
	op, tmpl, params := a.spec.match(method, path)
	if op == nil {
		return nil, fmt.Errorf("Invalid request method and/or path: %s %s", method, path)
	}
	for name, v := range params {
		if !idPattern.MatchString(v) {
			return nil, fmt.Errorf("Invalid %s %q: it must be 1-64 characters of A-Z, a-z, 0-9 and _", name, v)
		}
	}
	bp := op.bodyParam()
	if len(bytes.TrimSpace(body)) == 0 {
		body = nil
	}
	switch {
	case bp == nil && body != nil:
		return nil, fmt.Errorf("%s %s takes no body", method, path)
	case bp != nil && body == nil && (bp.Required || handlers[method+" "+tmpl] != nil):
		// The spec leaves some bodies optional (PUT /machine-config), but
		// Firecracker's parsers need one for every operation the stand-in implements.
		return nil, fmt.Errorf("Empty %s request: %s %s needs a JSON body (%s)", method, method, path, schemaName(a.spec, bp.Schema))
	case bp != nil && body != nil:
		v, err := decodeJSON(body)
		if err != nil {
			return nil, fmt.Errorf("An error occurred when deserializing the json body of a request: %v", err)
		}
		if err := a.spec.check(v, bp.Schema, ""); err != nil {
			return nil, fmt.Errorf("Invalid %s body for %s %s: %v", schemaName(a.spec, bp.Schema), method, path, err)
		}
		if obj, ok := v.(map[string]any); ok {
			for name, pv := range params {
				if bv, ok := obj[name]; ok && bv != pv {
					return nil, errors.New(msgIDMismatch)
				}
			}
		}
	}
	switch {
	case a.started && strings.Contains(op.Summary, "Pre-boot only"):
		return nil, errors.New(msgAfterStart)
	case !a.started && strings.Contains(op.Summary, "Post-boot only"):
		return nil, errors.New(msgBeforeStart)
	}
	h := handlers[method+" "+tmpl]
	if h == nil {
		return nil, fmt.Errorf("%s %s is not implemented by the fcm stand-in", method, path)
	}
	result, err := h(a, params, body)
	if err == nil && method != "GET" && !notBootPath[method+" "+tmpl] {
		a.bootPath = true
	}
	return result, err
}

func schemaName(sp *apiSpec, s *schema) string {
	if _, name, err := sp.resolve(s); err == nil && name != "" {
		return name
	}
	return "object"
}

// decode fills v from a body the spec check has accepted.
func decode(body []byte, v any) error {
	if body == nil {
		return errors.New("this request needs a JSON body")
	}
	return json.Unmarshal(body, v)
}
