package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// TestSpecLoads checks the embedded spec parses, every $ref resolves, and every
// operation the stand-in implements is one the spec has.
func TestSpecLoads(t *testing.T) {
	sp, err := loadSpec()
	if err != nil {
		t.Fatal(err)
	}
	if sp.Info.Version != "1.17.0-dev" {
		t.Errorf("spec version %q, want 1.17.0-dev", sp.Info.Version)
	}
	for key := range handlers {
		method, path, _ := strings.Cut(key, " ")
		if op, tmpl, _ := sp.match(method, strings.ReplaceAll(strings.ReplaceAll(path, "{", "x"), "}", "")); op == nil || tmpl != path {
			t.Errorf("handler %s: not an operation of the spec", key)
		}
	}
	if !bytes.Contains(specYAML, []byte("Apache 2.0")) {
		t.Error("the embedded spec lost its license")
	}
}

// TestValidation sends valid and invalid requests: every refusal is a 400 whose
// fault_message names the problem; valid bodies are 204; GET answers match the
// spec's response schemas; the record file has one line per request.
func TestValidation(t *testing.T) {
	makeTap(t, "fcsitap0")
	kernel := tempFile(t, "vmlinux.bin", "kernel")
	disk := tempFile(t, "rootfs.img", "disk")
	s := start(t, nil, "--id", "validation")

	cases := []struct {
		name         string
		method, path string
		body         string
		status       int
		faults       []string
	}{
		// Routing.
		{"unknown path", "GET", "/nope", "", 400, []string{"Invalid request method and/or path: GET /nope"}},
		{"unknown method", "DELETE", "/drives/rootfs", "", 400, []string{"Invalid request method and/or path: DELETE /drives/rootfs"}},
		{"GET of a PUT-only path", "GET", "/boot-source", "", 400, []string{"Invalid request method and/or path: GET /boot-source"}},
		{"empty path parameter", "PUT", "/drives/", `{"drive_id":"","is_root_device":true}`, 400, []string{"Invalid request method and/or path"}},
		{"bad path id", "PUT", "/drives/a-b", `{"drive_id":"a-b","is_root_device":false,"path_on_host":"` + disk + `"}`, 400, []string{"drive_id", "a-b"}},
		{"body on a GET", "GET", "/version", `{"a":1}`, 400, []string{"takes no body"}},
		// Bodies checked against the spec.
		{"empty required body", "PUT", "/boot-source", "", 400, []string{"Empty PUT request", "BootSource"}},
		{"empty optional body of an implemented PUT", "PUT", "/machine-config", "", 400, []string{"Empty PUT request", "MachineConfiguration"}},
		{"not JSON", "PUT", "/actions", `{"action_type":`, 400, []string{"deserializing the json body"}},
		{"two JSON values", "PUT", "/actions", `{"action_type":"FlushMetrics"} {}`, 400, []string{"trailing data"}},
		{"body not an object", "PUT", "/actions", `["FlushMetrics"]`, 400, []string{"want an object, got an array"}},
		{"unknown field", "PUT", "/boot-source", `{"kernel_image_path":"` + kernel + `","kernel_args":"x"}`, 400, []string{`unknown field "kernel_args"`, "BootSource"}},
		{"unknown nested field", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","is_root_device":true,"path_on_host":"` + disk + `","rate_limiter":{"bandwith":{}}}`, 400, []string{`unknown field "bandwith"`}},
		{"missing required field", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"` + disk + `"}`, 400, []string{"missing required field(s): is_root_device"}},
		{"missing required fields", "PUT", "/machine-config", `{"smt":false}`, 400, []string{"mem_size_mib, vcpu_count"}},
		{"missing nested required field", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","is_root_device":true,"path_on_host":"` + disk + `","rate_limiter":{"ops":{"size":1}}}`, 400, []string{"rate_limiter.ops", "refill_time"}},
		{"null required field", "PUT", "/boot-source", `{"kernel_image_path":null}`, 400, []string{"kernel_image_path", "must not be null"}},
		{"string for integer", "PUT", "/machine-config", `{"vcpu_count":"2","mem_size_mib":512}`, 400, []string{"vcpu_count", "want an integer", `string "2"`}},
		{"fraction for integer", "PUT", "/machine-config", `{"vcpu_count":1.5,"mem_size_mib":512}`, 400, []string{"vcpu_count", "want an integer"}},
		{"string for boolean", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","is_root_device":"true"}`, 400, []string{"is_root_device", "want a boolean"}},
		{"number for string", "PUT", "/boot-source", `{"kernel_image_path":1}`, 400, []string{"kernel_image_path", "want a string"}},
		{"object for array", "PUT", "/cpu-config", `{"kvm_capabilities":{}}`, 400, []string{"kvm_capabilities", "want an array"}},
		{"wrong type in array", "PUT", "/cpu-config", `{"kvm_capabilities":[1]}`, 400, []string{"kvm_capabilities[0]", "want a string"}},
		{"wrong additionalProperties type", "PUT", "/metrics", `{"metrics_path":"/tmp/m","properties":{"a":1}}`, 400, []string{"properties.a", "want a string"}},
		{"bad enum", "PUT", "/actions", `{"action_type":"Reboot"}`, 400, []string{"action_type", `"Reboot"`, "FlushMetrics, InstanceStart, SendCtrlAltDel"}},
		{"bad enum via $ref", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"T3"}`, 400, []string{"cpu_template", `"T3"`}},
		{"below minimum", "PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":128}`, 400, []string{"vcpu_count", "below the minimum 1"}},
		{"above maximum", "PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":128}`, 400, []string{"vcpu_count", "above the maximum 32"}},
		{"nested minimum", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"fcsitap0","mtu":10}`, 400, []string{"mtu", "minimum 68"}},
		{"drive id mismatch", "PUT", "/drives/rootfs", `{"drive_id":"other","is_root_device":true,"path_on_host":"` + disk + `"}`, 400, []string{"The id from the path does not match the id from the body!"}},
		{"iface id mismatch", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth1","host_dev_name":"fcsitap0"}`, 400, []string{"The id from the path does not match the id from the body!"}},
		// Valid by the spec, but not implemented: validated first, then refused.
		{"unimplemented PUT", "PUT", "/logger", `{"log_path":"/tmp/fc.log","level":"Info"}`, 400, []string{"PUT /logger is not implemented by the fcm stand-in"}},
		{"unimplemented PATCH", "PATCH", "/balloon", `{"amount_mib":1}`, 400, []string{"PATCH /balloon is not implemented by the fcm stand-in"}},
		{"vm state not in the enum", "PATCH", "/vm", `{"state":"Stopped"}`, 400, []string{"state", `"Stopped"`, "Paused, Resumed"}},
		{"pause before start", "PATCH", "/vm", `{"state":"Paused"}`, 400, []string{msgBeforeStart}},
		{"snapshot create without a memory file", "PUT", "/snapshot/create", `{"snapshot_path":"/tmp/s"}`, 400, []string{"missing required field(s): mem_file_path"}},
		{"snapshot create of a bad type", "PUT", "/snapshot/create", `{"snapshot_path":"/tmp/s","mem_file_path":"/tmp/m","snapshot_type":"Incremental"}`, 400, []string{"snapshot_type", "Full, Diff"}},
		{"snapshot create before start", "PUT", "/snapshot/create", `{"snapshot_path":"/tmp/s","mem_file_path":"/tmp/m"}`, 400, []string{msgBeforeStart}},
		{"snapshot load of a bad backend", "PUT", "/snapshot/load", `{"snapshot_path":"/tmp/s","mem_backend":{"backend_type":"Anon","backend_path":"/tmp/m"}}`, 400, []string{"mem_backend.backend_type", "File, Uffd"}},
		{"snapshot load with a backend lacking its path", "PUT", "/snapshot/load", `{"snapshot_path":"/tmp/s","mem_backend":{"backend_type":"File"}}`, 400, []string{"backend_path"}},
		{"unimplemented GET", "GET", "/vm/config", "", 400, []string{"GET /vm/config is not implemented by the fcm stand-in"}},
		{"unimplemented with free-form body", "PUT", "/mmds", `{"latest":{"a":[1,{"b":null}]}}`, 400, []string{"PUT /mmds is not implemented"}},
		{"unimplemented but invalid", "PUT", "/vsock", `{"guest_cid":2,"uds_path":"/tmp/v.sock"}`, 400, []string{"guest_cid", "below the minimum 3"}},
		{"post-boot only before start", "PATCH", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"` + disk + `"}`, 400, []string{"The requested operation is not supported before starting the microVM."}},
		// Valid.
		{"boot source", "PUT", "/boot-source", `{"kernel_image_path":"` + kernel + `","boot_args":"console=ttyS0"}`, 204, nil},
		{"boot source with null optional", "PUT", "/boot-source", `{"kernel_image_path":"` + kernel + `","initrd_path":null}`, 204, nil},
		{"root drive", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","is_root_device":true,"is_read_only":false,"path_on_host":"` + disk + `","cache_type":"Unsafe","io_engine":"Sync","rate_limiter":{"bandwidth":{"size":1048576,"refill_time":100}}}`, 204, nil},
		{"root drive again", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","is_root_device":true,"path_on_host":"` + disk + `"}`, 204, nil},
		{"machine config", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":512,"smt":false,"huge_pages":"None"}`, 204, nil},
		{"network interface", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"fcsitap0","guest_mac":"06:00:AC:10:00:32","mtu":1500}`, 204, nil},
		{"flush metrics", "PUT", "/actions", `{"action_type":"FlushMetrics"}`, 204, nil},
	}
	sent := 0
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s.t = t
			s.want(c.method, c.path, c.body, c.status, c.faults...)
		})
		sent++
	}
	s.t = t

	sp, err := loadSpec()
	if err != nil {
		t.Fatal(err)
	}
	// GET answers follow the spec's 200 schemas.
	for _, path := range []string{"/", "/version", "/machine-config"} {
		r := s.want("GET", path, "", http.StatusOK)
		sent++
		v, err := decodeJSON(r.body)
		if err != nil {
			t.Fatal(err)
		}
		op, _, _ := sp.match("GET", path)
		if err := sp.check(v, op.Responses["200"].Schema, ""); err != nil {
			t.Errorf("GET %s answered %s: %v", path, r.body, err)
		}
	}
	if r := s.want("GET", "/machine-config", "", 200); string(r.body) != `{"vcpu_count":2,"mem_size_mib":512,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}` {
		t.Errorf("GET /machine-config after PUT: %s", r.body)
	}
	sent++

	// The record has every request in order, with its body and outcome.
	recs := readRecord(t, s.record)
	if len(recs) != sent {
		t.Fatalf("record has %d lines, want %d", len(recs), sent)
	}
	for i, c := range cases {
		r := recs[i]
		if r.Method != c.method || r.Path != c.path || r.Status != c.status {
			t.Errorf("record %d: %s %s %d, want %s %s %d", i, r.Method, r.Path, r.Status, c.method, c.path, c.status)
		}
		if (r.Fault != nil) != (c.status == 400) || (r.Fault != nil && !strings.Contains(*r.Fault, c.faults[0])) {
			t.Errorf("record %d (%s): fault %v", i, c.name, r.Fault)
		}
		var want bytes.Buffer
		if json.Valid([]byte(c.body)) {
			json.Compact(&want, []byte(c.body))
		} else if c.body == "" {
			want.WriteString("null")
		} else {
			b, _ := json.Marshal(c.body)
			want.Write(b)
		}
		if string(r.Body) != want.String() {
			t.Errorf("record %d (%s): body %s, want %s", i, c.name, r.Body, want.String())
		}
	}
}

// TestRecordEnv checks FCM_STANDIN_RECORD names the record file.
func TestRecordEnv(t *testing.T) {
	rec := tempFile(t, "requests.jsonl", "")
	s := start(t, []string{"FCM_STANDIN_RECORD=" + rec})
	s.want("GET", "/", "", 200)
	s.want("PUT", "/actions", `{"action_type":"InstanceStart"}`, 400, msgNoKernel)
	recs := readRecord(t, rec)
	if len(recs) != 2 || recs[0].Status != 200 || recs[0].Fault != nil || string(recs[0].Body) != "null" ||
		recs[1].Status != 400 || recs[1].Fault == nil || *recs[1].Fault != msgNoKernel ||
		string(recs[1].Body) != `{"action_type":"InstanceStart"}` {
		t.Errorf("record: %+v", recs)
	}
}
