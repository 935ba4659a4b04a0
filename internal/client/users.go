package client

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"

	"github.com/fcmhost/fcm/internal/api"
)

// StartLogin begins an OIDC login (no token is sent): the answer has the URL
// the person opens and what PollLogin needs; req says how the CLI takes the
// grant (a loopback port, or a typed code).
// Without OIDC on the daemon the error is an *api.Error with code
// api.CodeLoginDisabled whose message says how to turn it on.
func (c *Client) StartLogin(ctx context.Context, req api.LoginStartRequest) (*api.LoginStart, error) {
	var out api.LoginStart
	return &out, c.call(ctx, http.MethodPost, "/v1/logins", req, &out)
}

// PollLogin asks once whether the login id is done (no token is sent). It
// returns the new token and its user once the person has confirmed, pending
// true while they have not, or the daemon's refusal as an *api.Error
// (api.CodeNotAllowed, api.CodeLoginFailed, api.CodeExpired or a 404).
func (c *Client) PollLogin(ctx context.Context, id, pollToken, grant string) (res *api.LoginResult, pending bool, err error) {
	resp, err := c.do(ctx, http.MethodPost, "/v1/logins/"+url.PathEscape(id)+"/token", api.LoginPoll{PollToken: pollToken, Grant: grant}, "")
	if err != nil {
		return nil, false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusAccepted {
		return nil, true, nil
	}
	var out api.LoginResult
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, false, err
	}
	if out.Token == "" {
		return nil, false, errors.New("the daemon's answer to a finished login has no token")
	}
	return &out, false, nil
}

// IsLoginExpired reports whether err says a login is gone: expired, already
// used, or unknown to the daemon (a restart forgets logins under way).
func IsLoginExpired(err error) bool {
	var ae *api.Error
	return errors.As(err, &ae) && (ae.Code == api.CodeExpired || ae.Code == api.CodeNotFound)
}

// IsUnauthorized reports whether err is the API's 401: no valid token (it was
// revoked, or never was one).
func IsUnauthorized(err error) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Code == api.CodeUnauthorized
}

// WhoAmI tells who the token is: the admin token or a user.
func (c *Client) WhoAmI(ctx context.Context) (*api.WhoAmI, error) {
	var out api.WhoAmI
	return &out, c.call(ctx, http.MethodGet, "/v1/whoami", nil, &out)
}

// ListTokens lists tokens without their secrets: a user's own, or every
// token for the admin.
func (c *Client) ListTokens(ctx context.Context) ([]api.Token, error) {
	var out api.ListTokensResponse
	return out.Tokens, c.call(ctx, http.MethodGet, "/v1/tokens", nil, &out)
}

// RevokeToken revokes the token with this id; "current" is the client's own.
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	return c.call(ctx, http.MethodDelete, "/v1/tokens/"+url.PathEscape(id), nil, nil)
}

// ListUsers lists the users, the allow-list and whether logins are enabled
// (admin only).
func (c *Client) ListUsers(ctx context.Context) (*api.ListUsersResponse, error) {
	var out api.ListUsersResponse
	return &out, c.call(ctx, http.MethodGet, "/v1/users", nil, &out)
}

// Allow adds an allow rule for pattern (an email, "@domain" or "*") and
// returns the users and rules after it (admin only).
func (c *Client) Allow(ctx context.Context, pattern string) (*api.ListUsersResponse, error) {
	var out api.ListUsersResponse
	return &out, c.call(ctx, http.MethodPost, "/v1/users/allow", api.AccessRequest{Pattern: pattern}, &out)
}

// Deny adds a deny rule for pattern (an email, "@domain" or "*") and returns
// the users and rules after it (admin only).
func (c *Client) Deny(ctx context.Context, pattern string) (*api.ListUsersResponse, error) {
	var out api.ListUsersResponse
	return &out, c.call(ctx, http.MethodPost, "/v1/users/deny", api.AccessRequest{Pattern: pattern}, &out)
}

// RemoveUser removes a user (an email or id) and revokes their tokens (admin
// only). vms says what becomes of their VMs: "destroy", "keep" (the admin
// owns them then) or "" (refused with api.CodeHasVMs if they own any).
func (c *Client) RemoveUser(ctx context.Context, user, vms string) (*api.RemoveUserResponse, error) {
	path := "/v1/users/" + url.PathEscape(user)
	if vms != "" {
		path += "?vms=" + url.QueryEscape(vms)
	}
	var out api.RemoveUserResponse
	return &out, c.call(ctx, http.MethodDelete, path, nil, &out)
}
