package oidctest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	jose "github.com/go-jose/go-jose/v4"
)

// tamperIDToken wraps the token endpoint: while a Tamper is pending, it
// rewrites the ID token of the first successful answer and clears the Tamper.
func (p *Provider) tamperIDToken(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		pending := p.tamper != (Tamper{})
		p.mu.Unlock()
		if !pending {
			next.ServeHTTP(w, r)
			return
		}
		rec := &recorder{header: make(http.Header), status: http.StatusOK}
		next.ServeHTTP(rec, r)
		body := rec.body.Bytes()
		if rec.status == http.StatusOK {
			if b, err := p.rewrite(body); err != nil {
				rec.status, body = http.StatusInternalServerError, fmt.Appendf(nil, `{"error":"server_error","error_description":%q}`, err.Error())
			} else {
				body = b
			}
		}
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(rec.status)
		w.Write(body)
	})
}

// rewrite takes the pending Tamper and applies it to the id_token of a token
// response. A response without an ID token is left alone, and the Tamper
// stays for the next one.
func (p *Provider) rewrite(body []byte) ([]byte, error) {
	var resp map[string]any
	if err := json.Unmarshal(body, &resp); err != nil {
		return nil, fmt.Errorf("tamper: decode token response: %w", err)
	}
	idToken, _ := resp["id_token"].(string)
	if idToken == "" {
		return body, nil
	}
	p.mu.Lock()
	t := p.tamper
	p.tamper = Tamper{}
	p.mu.Unlock()
	if t == (Tamper{}) { // a concurrent request took it
		return body, nil
	}

	jws, err := jose.ParseSigned(idToken, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return nil, fmt.Errorf("tamper: parse id token: %w", err)
	}
	payload, err := jws.Verify(&p.storage.key.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("tamper: verify own id token: %w", err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		return nil, fmt.Errorf("tamper: decode id token claims: %w", err)
	}
	if t.Audience != "" {
		claims["aud"] = []string{t.Audience}
	}
	if t.Issuer != "" {
		claims["iss"] = t.Issuer
	}
	payload, err = json.Marshal(claims)
	if err != nil {
		return nil, fmt.Errorf("tamper: encode id token claims: %w", err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{
		Algorithm: jose.RS256,
		Key:       &jose.JSONWebKey{Key: p.storage.key, KeyID: p.storage.keyID},
	}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("tamper: signer: %w", err)
	}
	signed, err := signer.Sign(payload)
	if err != nil {
		return nil, fmt.Errorf("tamper: sign id token: %w", err)
	}
	if resp["id_token"], err = signed.CompactSerialize(); err != nil {
		return nil, fmt.Errorf("tamper: serialize id token: %w", err)
	}
	return json.Marshal(resp)
}

// recorder holds a handler's answer so it can be changed before it is sent.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(b []byte) (int, error) { return r.body.Write(b) }
func (r *recorder) WriteHeader(status int)      { r.status = status }
