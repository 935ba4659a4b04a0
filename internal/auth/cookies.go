package auth

import (
	"errors"
	"net"
	"net/http"
	"strings"
	"time"
)

// The cookies fcm sets. Over HTTPS each has the __Host- prefix, so browsers
// keep it to this very host, Secure and Path=/: no other subdomain (a VM's
// app at <vm>.<domain>) can set, shadow or toss one. Plain HTTP (a daemon
// on loopback) uses the names without the prefix; they are prefixed fcm_
// because on 127.0.0.1 browsers share cookies across ports.
const (
	stateCookie   = "fcm_login_state"
	confirmCookie = "fcm_login_confirm"
	// SessionCookie holds a browser's token (a "web session" token of the
	// user) over plain HTTP; SecureSessionCookie over HTTPS, the only one read
	// there.
	SessionCookie       = "fcm_session"
	SecureSessionCookie = "__Host-fcm_session"
	hostPrefix          = "__Host-"
)

// SessionSecret returns the token in r's session cookie, "" for none. A
// request that came over HTTPS (TLS, or Caddy's X-Forwarded-Proto from
// loopback) is read only from the __Host- cookie: an unprefixed one may have
// been planted by another subdomain.
func SessionSecret(r *http.Request) string {
	names := []string{SecureSessionCookie, SessionCookie}
	if OverHTTPS(r) {
		names = names[:1]
	}
	for _, name := range names {
		if c, err := r.Cookie(name); err == nil && c.Value != "" {
			return c.Value
		}
	}
	return ""
}

// OverHTTPS reports whether the browser reached the daemon over HTTPS: TLS
// here, or the local proxy (Caddy, from loopback) says so.
func OverHTTPS(r *http.Request) bool {
	if r.TLS != nil {
		return true
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	ip := net.ParseIP(host)
	return err == nil && ip != nil && ip.IsLoopback() && r.Header.Get("X-Forwarded-Proto") == "https"
}

// SetSessionCookie sets (ttl > 0) or clears (ttl <= 0) the session cookie;
// clearing clears both names.
func SetSessionCookie(w http.ResponseWriter, secret string, ttl time.Duration, secure bool) {
	if ttl <= 0 {
		http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: secure})
		if secure {
			http.SetCookie(w, &http.Cookie{Name: SecureSessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: true})
		}
		return
	}
	name := SessionCookie
	if secure {
		name = SecureSessionCookie
	}
	http.SetCookie(w, &http.Cookie{Name: name, Value: secret, Path: "/", MaxAge: int(ttl.Seconds()),
		HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: secure})
}

// secure reports whether browsers reach the daemon over HTTPS.
func (s *Service) secure() bool { return strings.HasPrefix(s.cfg.PublicURL, "https://") }

// cookieName is name as set and read: with __Host- over HTTPS.
func (s *Service) cookieName(name string) string {
	if s.secure() {
		return hostPrefix + name
	}
	return name
}

// onlyCookie returns the value of the one cookie called name (with its
// prefix over HTTPS); none, or more than one (a planted one beside the
// real), is an error.
func (s *Service) onlyCookie(r *http.Request, name string) (string, error) {
	var found []string
	for _, c := range r.CookiesNamed(s.cookieName(name)) {
		found = append(found, c.Value)
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return "", errors.New("no cookie")
	}
	return "", errors.New("more than one cookie")
}

func (s *Service) setCookie(w http.ResponseWriter, name, value string) {
	http.SetCookie(w, &http.Cookie{Name: s.cookieName(name), Value: value, Path: "/", MaxAge: int(LoginTTL.Seconds()),
		HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: s.secure()})
}

func (s *Service) clearCookie(w http.ResponseWriter, name string) {
	http.SetCookie(w, &http.Cookie{Name: s.cookieName(name), Value: "", Path: "/", MaxAge: -1, HttpOnly: true,
		SameSite: http.SameSiteLaxMode, Secure: s.secure()})
}
