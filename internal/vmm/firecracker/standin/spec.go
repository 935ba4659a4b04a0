package main

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"math/big"
	"slices"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// specYAML is Firecracker's swagger 2.0 API description (Apache-2.0), copied
// unchanged from Firecracker's repository. Every request is checked against it.
//
//go:embed firecracker-api.yaml
var specYAML []byte

// apiSpec is the part of a swagger 2.0 document the stand-in reads.
type apiSpec struct {
	Info struct {
		Version string `yaml:"version"`
	} `yaml:"info"`
	Paths       map[string]map[string]*operation `yaml:"paths"`
	Definitions map[string]*schema               `yaml:"definitions"`
}

type operation struct {
	Summary     string               `yaml:"summary"`
	OperationID string               `yaml:"operationId"`
	Parameters  []parameter          `yaml:"parameters"`
	Responses   map[string]*response `yaml:"responses"`
}

type response struct {
	Schema *schema `yaml:"schema"`
}

type parameter struct {
	Name     string  `yaml:"name"`
	In       string  `yaml:"in"` // "path" or "body" in Firecracker's spec
	Required bool    `yaml:"required"`
	Type     string  `yaml:"type"`
	Schema   *schema `yaml:"schema"`
}

type schema struct {
	Ref                  string             `yaml:"$ref"`
	Type                 string             `yaml:"type"`
	Required             []string           `yaml:"required"`
	Properties           map[string]*schema `yaml:"properties"`
	Items                *schema            `yaml:"items"`
	Enum                 []string           `yaml:"enum"`
	Minimum              *float64           `yaml:"minimum"`
	Maximum              *float64           `yaml:"maximum"`
	AdditionalProperties *additional        `yaml:"additionalProperties"`
}

// additional is additionalProperties: a boolean or a schema for the values.
type additional struct {
	allowed bool
	schema  *schema
}

func (a *additional) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		return n.Decode(&a.allowed)
	}
	a.allowed, a.schema = true, new(schema)
	return n.Decode(a.schema)
}

// loadSpec parses the embedded spec and checks that every $ref resolves.
func loadSpec() (*apiSpec, error) {
	var sp apiSpec
	if err := yaml.Unmarshal(specYAML, &sp); err != nil {
		return nil, fmt.Errorf("firecracker-api.yaml: %w", err)
	}
	if len(sp.Paths) == 0 || len(sp.Definitions) == 0 {
		return nil, fmt.Errorf("firecracker-api.yaml: no paths or definitions")
	}
	var refs []*schema
	var walk func(s *schema)
	walk = func(s *schema) {
		if s == nil {
			return
		}
		refs = append(refs, s)
		walk(s.Items)
		for _, p := range s.Properties {
			walk(p)
		}
		if s.AdditionalProperties != nil {
			walk(s.AdditionalProperties.schema)
		}
	}
	for _, d := range sp.Definitions {
		walk(d)
	}
	for _, item := range sp.Paths {
		for _, op := range item {
			for _, p := range op.Parameters {
				walk(p.Schema)
			}
			for _, r := range op.Responses {
				if r != nil {
					walk(r.Schema)
				}
			}
		}
	}
	for _, s := range refs {
		if _, _, err := sp.resolve(s); err != nil {
			return nil, fmt.Errorf("firecracker-api.yaml: %w", err)
		}
	}
	return &sp, nil
}

// resolve follows $ref to a definition; name is the definition's name, or "".
func (sp *apiSpec) resolve(s *schema) (*schema, string, error) {
	name := ""
	for i := 0; s.Ref != ""; i++ {
		n, ok := strings.CutPrefix(s.Ref, "#/definitions/")
		d := sp.Definitions[n]
		if !ok || d == nil || i > 16 {
			return nil, "", fmt.Errorf("unresolvable $ref %q", s.Ref)
		}
		s, name = d, n
	}
	return s, name, nil
}

// match finds the operation for method and path; params holds the values of
// the template's {placeholders}. tmpl is the spec's path ("/drives/{drive_id}").
func (sp *apiSpec) match(method, path string) (op *operation, tmpl string, params map[string]string) {
	segs := strings.Split(strings.TrimPrefix(path, "/"), "/")
	for t, item := range sp.Paths {
		tsegs := strings.Split(strings.TrimPrefix(t, "/"), "/")
		if len(tsegs) != len(segs) {
			continue
		}
		ps := map[string]string{}
		ok := true
		for i, ts := range tsegs {
			if strings.HasPrefix(ts, "{") && strings.HasSuffix(ts, "}") && segs[i] != "" {
				ps[ts[1:len(ts)-1]] = segs[i]
			} else if ts != segs[i] {
				ok = false
				break
			}
		}
		if o := item[strings.ToLower(method)]; ok && o != nil {
			return o, t, ps
		}
	}
	return nil, "", nil
}

// bodyParam is the operation's body parameter, or nil when it takes none.
func (op *operation) bodyParam() *parameter {
	for i := range op.Parameters {
		if op.Parameters[i].In == "body" {
			return &op.Parameters[i]
		}
	}
	return nil
}

// decodeJSON parses a request body, keeping numbers as json.Number.
func decodeJSON(body []byte) (any, error) {
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, fmt.Errorf("trailing data after the JSON value")
	}
	return v, nil
}

// check validates v against s recursively, as serde with deny_unknown_fields
// would: unknown and missing required properties, JSON types, enum, minimum and
// maximum. at names the value in errors ("" for the whole body).
func (sp *apiSpec) check(v any, s *schema, at string) error {
	s, _, err := sp.resolve(s)
	if err != nil {
		return err
	}
	where := "the body"
	if at != "" {
		where = "field " + at
	}
	typ := s.Type
	if typ == "" && s.Properties != nil {
		typ = "object"
	}
	if typ != "" && !hasType(v, typ) {
		return fmt.Errorf("%s: want %s, got %s", where, article(typ), describe(v))
	}
	if len(s.Enum) > 0 {
		lit := scalarText(v)
		if !slices.Contains(s.Enum, lit) {
			return fmt.Errorf("%s: %s is not one of %s", where, describe(v), strings.Join(s.Enum, ", "))
		}
	}
	if n, ok := v.(json.Number); ok {
		f, _ := n.Float64()
		if s.Minimum != nil && f < *s.Minimum {
			return fmt.Errorf("%s: %s is below the minimum %v", where, n, *s.Minimum)
		}
		if s.Maximum != nil && f > *s.Maximum {
			return fmt.Errorf("%s: %s is above the maximum %v", where, n, *s.Maximum)
		}
	}
	switch val := v.(type) {
	case []any:
		if s.Items != nil {
			for i, item := range val {
				if err := sp.check(item, s.Items, fmt.Sprintf("%s[%d]", at, i)); err != nil {
					return err
				}
			}
		}
	case map[string]any:
		return sp.checkObject(val, s, at, where)
	}
	return nil
}

func (sp *apiSpec) checkObject(obj map[string]any, s *schema, at, where string) error {
	prefix := ""
	if at != "" {
		prefix = at + "."
	}
	var missing []string
	for _, r := range s.Required {
		if _, ok := obj[r]; !ok {
			missing = append(missing, r)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s: missing required field(s): %s", where, strings.Join(missing, ", "))
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		val := obj[k]
		ps, known := s.Properties[k]
		if !known {
			ap := s.AdditionalProperties
			switch {
			case ap == nil || !ap.allowed:
				return fmt.Errorf("%s: unknown field %q (known: %s)", where, k, strings.Join(propNames(s), ", "))
			case ap.schema == nil:
				continue
			}
			ps = ap.schema
		}
		if val == nil {
			// serde reads null as None for optional fields; required ones need a value.
			if known && slices.Contains(s.Required, k) {
				return fmt.Errorf("field %s%s: must not be null", prefix, k)
			}
			continue
		}
		if err := sp.check(val, ps, prefix+k); err != nil {
			return err
		}
	}
	return nil
}

func propNames(s *schema) []string {
	names := make([]string, 0, len(s.Properties))
	for n := range s.Properties {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// hasType reports whether a decoded JSON value is of the swagger type typ.
func hasType(v any, typ string) bool {
	switch typ {
	case "object":
		_, ok := v.(map[string]any)
		return ok
	case "array":
		_, ok := v.([]any)
		return ok
	case "string":
		_, ok := v.(string)
		return ok
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "number":
		_, ok := v.(json.Number)
		return ok
	case "integer":
		n, ok := v.(json.Number)
		if !ok {
			return false
		}
		_, ok = new(big.Int).SetString(string(n), 10) // 1.0 and 1e3 are not integers to serde
		return ok
	}
	return true
}

func article(typ string) string {
	if strings.IndexByte("aeiou", typ[0]) >= 0 {
		return "an " + typ
	}
	return "a " + typ
}

// describe names a JSON value's type and, for scalars, its value.
func describe(v any) string {
	switch val := v.(type) {
	case nil:
		return "null"
	case bool:
		return fmt.Sprintf("boolean %v", val)
	case json.Number:
		return "number " + string(val)
	case string:
		return fmt.Sprintf("string %q", val)
	case []any:
		return "an array"
	default:
		return "an object"
	}
}

func scalarText(v any) string {
	switch val := v.(type) {
	case string:
		return val
	case json.Number:
		return string(val)
	case bool:
		return fmt.Sprint(val)
	}
	return ""
}
