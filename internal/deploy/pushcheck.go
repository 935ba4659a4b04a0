package deploy

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// takePush checks the pre-receive hook's call (POST /internal/push): its push
// token, which is good for one call and forgotten here, and its Fcm-Old,
// Fcm-Commit and Fcm-Ref headers. On error, status is the HTTP status to
// answer with.
func (s *Service) takePush(r *http.Request) (p *push, upd RefUpdate, status int, err error) {
	token, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	s.mu.Lock()
	p = s.pushes[token]
	delete(s.pushes, token)
	s.mu.Unlock()
	if p == nil || token == "" {
		return nil, upd, http.StatusForbidden, errors.New("unknown push")
	}
	// The pack is in: the app's next push may send its own.
	s.packReceived(token)
	upd = RefUpdate{Old: r.Header.Get("Fcm-Old"), New: r.Header.Get("Fcm-Commit"), Ref: r.Header.Get("Fcm-Ref")}
	if err := CheckPushUpdate(upd); err != nil {
		return nil, upd, http.StatusBadRequest, err
	}
	return p, upd, http.StatusOK, nil
}

// CheckPushUpdate checks what a hook says it pushes before anything is made of
// it: a branch fcm deploys (refs/heads/main or master), a new commit id and an
// old one (the zero id for a new branch) of 40 (SHA-1) or 64 (SHA-256) hex
// digits, both of one length.
func CheckPushUpdate(u RefUpdate) error {
	if u.Ref != "refs/heads/main" && u.Ref != "refs/heads/master" {
		return fmt.Errorf("bad ref %q: fcm deploys refs/heads/main or refs/heads/master", truncate(u.Ref, 60))
	}
	if !isObjectID(u.New) || strings.Trim(u.New, "0") == "" {
		return fmt.Errorf("bad commit id %q: want 40 or 64 hex digits", truncate(u.New, 70))
	}
	if !isObjectID(u.Old) || len(u.Old) != len(u.New) {
		return fmt.Errorf("bad old commit id %q: want %d hex digits", truncate(u.Old, 70), len(u.New))
	}
	return nil
}

// isObjectID reports whether id is a git object id in lower-case hex: 40
// digits (SHA-1) or 64 (SHA-256).
func isObjectID(id string) bool {
	if len(id) != 40 && len(id) != 64 {
		return false
	}
	for _, c := range id {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
