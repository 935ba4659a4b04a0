package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/fcmhost/fcm/internal/api"
	"github.com/fcmhost/fcm/internal/auth"
	"github.com/fcmhost/fcm/internal/store"
	"github.com/fcmhost/fcm/internal/vm"
)

// whoami is GET /v1/whoami.
func (s *Server) whoami(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	out := api.WhoAmI{Role: api.RoleUser, TokenID: tok.ID}
	if tok.Admin {
		out.Role = api.RoleAdmin
	}
	if tok.User != "" {
		var u *store.User
		if err := s.Store.View(func(tx *store.Tx) (err error) { u, err = tx.User(tok.User); return }); err != nil {
			s.fail(w, err)
			return
		}
		au := auth.APIUser(u)
		out.User = &au
	}
	writeJSON(w, http.StatusOK, out)
}

// listTokens is GET /v1/tokens: the caller's own tokens (every token, to the
// admin).
func (s *Server) listTokens(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	var toks []*store.Token
	emails := map[string]string{}
	err := s.Store.View(func(tx *store.Tx) (err error) {
		if toks, err = tx.Tokens(); err != nil {
			return err
		}
		emails, err = userEmails(tx)
		return err
	})
	if err != nil {
		s.fail(w, err)
		return
	}
	out := api.ListTokensResponse{Tokens: []api.Token{}}
	for _, t := range toks {
		if !tok.Admin && t.Owner() != tok.Owner() {
			continue
		}
		out.Tokens = append(out.Tokens, api.Token{ID: t.ID, Name: t.Name, Admin: t.Admin, User: emails[t.User],
			Current: t.ID == tok.ID, CreatedAt: t.CreatedAt, LastUsedAt: t.LastUsedAt, ExpiresAt: t.ExpiresAt})
	}
	sort.Slice(out.Tokens, func(i, j int) bool { return out.Tokens[i].CreatedAt.Before(out.Tokens[j].CreatedAt) })
	writeJSON(w, http.StatusOK, out)
}

// revokeToken is DELETE /v1/tokens/{id}: a user revokes one of their tokens
// ("current": the one they call with), the admin any user's. The admin token
// is rotated, not revoked.
func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	id := r.PathValue("id")
	if id == "current" {
		id = tok.ID
	}
	if n := noteOf(r); n != nil && id == tok.ID {
		n.action = "logout" // fcm logout: this token, by itself
	} else {
		noteDetail(r, id)
	}
	var gone []*store.Token
	var refused string
	err := s.Store.Update(func(tx *store.Tx) (err error) {
		gone, err = tx.DeleteTokens(func(t *store.Token) bool {
			if t.ID != id || !tok.Admin && t.Owner() != tok.Owner() {
				return false
			}
			if t.Admin {
				refused = "the admin token is not revoked but rotated: fcm token rotate"
				return false
			}
			return true
		})
		return err
	})
	switch {
	case err != nil:
		s.fail(w, err)
	case refused != "":
		writeError(w, http.StatusConflict, api.CodeConflict, refused)
	case len(gone) == 0:
		writeError(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("no token %q", id))
	default:
		s.logger().Info("token revoked", "token", id, "by", tok.ID)
		s.endRevoked() // its consoles and log follows end now
		w.WriteHeader(http.StatusNoContent)
	}
}

// userEmails maps user ids to emails.
func userEmails(tx *store.Tx) (map[string]string, error) {
	users, err := tx.Users()
	out := map[string]string{}
	for _, u := range users {
		out[u.ID] = u.Email
	}
	return out, err
}

// ownerName is how the admin sees a VM's owner: the user's email, or "admin".
func ownerName(emails map[string]string, owner string) string {
	if e, ok := emails[owner]; ok {
		return e
	}
	return owner
}

// listUsers is GET /v1/users.
func (s *Server) listUsers(w http.ResponseWriter, r *http.Request, _ *store.Token) {
	out, err := s.usersList()
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) usersList() (*api.ListUsersResponse, error) {
	out := &api.ListUsersResponse{Users: []api.User{}, Rules: []api.AccessRule{}, OIDC: s.Auth != nil}
	err := s.Store.View(func(tx *store.Tx) error {
		users, err := tx.Users()
		if err != nil {
			return err
		}
		rules, err := tx.AccessRules()
		if err != nil {
			return err
		}
		toks, err := tx.Tokens()
		if err != nil {
			return err
		}
		vms, err := tx.VMs()
		if err != nil {
			return err
		}
		for _, u := range users {
			au := auth.APIUser(u)
			au.Allowed = store.AllowedUser(rules, u)
			for _, t := range toks {
				if t.User == u.ID {
					au.Tokens++
				}
			}
			for _, v := range vms {
				if v.Owner == u.ID {
					au.VMs = append(au.VMs, v.Name)
				}
			}
			out.Users = append(out.Users, au)
		}
		for _, rule := range rules {
			src := "api"
			if rule.Flag {
				src = "flag"
			}
			out.Rules = append(out.Rules, api.AccessRule{Pattern: rule.Pattern, Allow: rule.Allow, Source: src})
		}
		return nil
	})
	return out, err
}

func (s *Server) allowUsers(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	s.setAccess(w, r, true)
}

func (s *Server) denyUsers(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	s.setAccess(w, r, false)
}

// setAccess adds an API rule. A user it keeps out is refused from the next
// request on (tokens are checked against the list each time).
func (s *Server) setAccess(w http.ResponseWriter, r *http.Request, allow bool) {
	var req api.AccessRequest
	if !decode(w, r, &req) {
		return
	}
	noteDetail(r, req.Pattern)
	pattern, err := store.NormalizePattern(req.Pattern)
	if err != nil {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
		return
	}
	if err := s.Store.Update(func(tx *store.Tx) error { return tx.SetAccess(pattern, allow) }); err != nil {
		s.fail(w, err)
		return
	}
	s.logger().Info("allow-list", "pattern", pattern, "allow", allow)
	s.endRevoked() // a user it keeps out loses their consoles and log follows now
	out, err := s.usersList()
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// removeUser is DELETE /v1/users/{user} (an email or a user id): their tokens
// and keys go at once; their VMs are destroyed or given to the admin, as
// ?vms= says. Without it a user who owns VMs is not removed (409 has_vms).
func (s *Server) removeUser(w http.ResponseWriter, r *http.Request, tok *store.Token) {
	noteDetail(r, r.PathValue("user"))
	choice := r.URL.Query().Get("vms")
	if choice != "" && choice != "destroy" && choice != "keep" {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, fmt.Sprintf("vms=%q: want destroy or keep", choice))
		return
	}
	u, err := s.findUser(r.PathValue("user"))
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			writeError(w, http.StatusNotFound, api.CodeNotFound, err.Error())
		} else {
			writeError(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
		}
		return
	}
	// In one transaction: the user, their tokens and keys go, and every VM
	// they own, by id (one still being created too: a create reserved after
	// this finds its user gone), is the admin's. Those to destroy are then
	// destroyed by id: one that fails stays the admin's, not an orphan.
	out := api.RemoveUserResponse{User: auth.APIUser(u)}
	var owned []*store.VM
	errHasVMs := errors.New("has vms")
	err = s.Store.Update(func(tx *store.Tx) error {
		vms, err := tx.VMs()
		if err != nil {
			return err
		}
		owned = owned[:0]
		for _, v := range vms {
			if v.Owner == u.ID {
				owned = append(owned, v)
			}
		}
		if len(owned) > 0 && choice == "" {
			return errHasVMs
		}
		if out.TokensRevoked, err = tx.DeleteUser(u.ID); err != nil {
			return err
		}
		for _, v := range owned {
			v.Owner = "admin"
			if err := tx.PutVM(v); err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, errHasVMs) {
		var names []string
		for _, v := range owned {
			names = append(names, v.Name)
		}
		writeError(w, http.StatusConflict, api.CodeHasVMs, fmt.Sprintf("%s owns %d VMs (%s): say whether to destroy them or keep them (the admin will own them): vms=destroy or vms=keep",
			u.Email, len(owned), strings.Join(names, ", ")))
		return
	}
	if err != nil {
		s.fail(w, err)
		return
	}
	s.logger().Warn("user removed", "user", u.Email, "user_id", u.ID, "tokens_revoked", out.TokensRevoked, "vms", choice)
	s.endRevoked() // their consoles and log follows end now
	for _, v := range owned {
		// The ex-user's consoles into it end with the ownership.
		s.closeConsoles(v, "its owner was removed")
		if choice == "keep" {
			out.VMsKept = append(out.VMsKept, v.Name)
			continue
		}
		if err := s.destroy(r.Context(), v); err != nil {
			s.fail(w, fmt.Errorf("user %s removed, but destroying vm %s failed (the admin owns it now): %w", u.Email, v.Name, err))
			return
		}
		out.VMsDestroyed = append(out.VMsDestroyed, v.Name)
	}
	writeJSON(w, http.StatusOK, out)
}

// findUser finds a user by id or email.
func (s *Server) findUser(key string) (*store.User, error) {
	var users []*store.User
	if err := s.Store.View(func(tx *store.Tx) (err error) { users, err = tx.Users(); return }); err != nil {
		return nil, err
	}
	var found []*store.User
	for _, u := range users {
		if u.ID == key || strings.EqualFold(u.Email, key) {
			found = append(found, u)
		}
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("no user %q: %w", key, store.ErrNotFound)
	case 1:
		return found[0], nil
	}
	var ids []string
	for _, u := range found {
		ids = append(ids, u.ID+" ("+u.Issuer+")")
	}
	return nil, fmt.Errorf("%d users have the email %s: name one by id: %s", len(found), key, strings.Join(ids, ", "))
}

// ownerOf is who a create by tok is for: a user, held to the per-user quotas
// (checked by the vm manager as it reserves the VM), or the admin, held to
// none.
func (s *Server) ownerOf(tok *store.Token) vm.Owner {
	if tok.Admin {
		return vm.Owner{ID: tok.Owner()}
	}
	return vm.Owner{ID: tok.Owner(), User: true,
		Quota: vm.Quota{VMs: s.MaxVMsPerUser, MemoryMiB: s.MaxMemoryPerUser, CPUs: s.MaxCPUsPerUser}}
}

// destroy destroys v and forgets what hangs on it: consoles, its app, its route.
func (s *Server) destroy(ctx context.Context, v *store.VM) error {
	if s.Deploys != nil {
		// First: nothing queued for the app may act while the VM goes.
		s.Deploys.Abandon(v.ID)
	}
	if err := s.VMs.Destroy(context.WithoutCancel(ctx), v.Name, v.ID); err != nil {
		if s.Deploys != nil {
			if s.Store.View(func(tx *store.Tx) error { _, err := tx.VMByID(v.ID); return err }) == nil {
				s.Deploys.Revive(v.ID) // still there: its app goes on
			}
		}
		return err
	}
	s.closeConsoles(v, "the VM was destroyed")
	if s.Deploys != nil {
		if err := s.Deploys.Forget(v.ID); err != nil {
			s.logger().Error("forget the app", "vm", v.Name, "err", err)
		}
	}
	s.routeChanged(nil, nil)
	return nil
}
