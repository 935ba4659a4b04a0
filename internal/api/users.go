package api

import "time"

// Users, tokens and logins.
//
// A person logs in with OIDC (`fcm login`): the CLI starts a login with
// POST /v1/logins (no token needed), prints its URL and code, and polls
// POST /v1/logins/{id}/token until the person has signed in at the provider in
// a browser and confirmed the code on fcm's page. The answer is a new token
// for that user.
//
// Routes (all JSON):
//
//	POST   /v1/logins                 public   -> 201 LoginStart; 501 login_disabled without OIDC
//	POST   /v1/logins/{id}/token      public   body LoginPoll -> 200 LoginResult,
//	                                           202 {"status":"pending"}, 403 not_allowed,
//	                                           400 login_failed, 404/410 expired
//	GET    /v1/whoami                 token    -> WhoAmI
//	GET    /v1/tokens                 token    -> ListTokensResponse (a user's own; admin: all)
//	DELETE /v1/tokens/{id}            token    -> 204; {id} "current" is the caller's own token
//	GET    /v1/users                  admin    -> ListUsersResponse
//	POST   /v1/users/allow            admin    body AccessRequest -> 200 ListUsersResponse
//	POST   /v1/users/deny             admin    body AccessRequest -> 200 ListUsersResponse
//	DELETE /v1/users/{user}?vms=destroy|keep   admin -> 200 RemoveUserResponse;
//	                                           409 has_vms when the user owns VMs and vms is not given

// Role names in WhoAmI and User.
const (
	RoleAdmin = "admin"
	RoleUser  = "user"
)

// More error codes.
const (
	CodeLoginDisabled = "login_disabled" // the daemon has no OIDC client configured (HTTP 501)
	CodeNotAllowed    = "not_allowed"    // the email is not on the daemon's allow-list (403)
	CodeLoginFailed   = "login_failed"   // the provider or the ID token failed a check (400)
	CodeExpired       = "expired"        // the login expired or was already used (410)
	CodeQuota         = "quota_exceeded" // the user has --max-vms-per-user VMs already (403)
	CodeHasVMs        = "has_vms"        // users rm without saying what to do with the user's VMs (409)
	CodeRateLimited   = "rate_limited"   // too many login requests from one address (429)
	LoginPending      = "pending"        // LoginStatus.Status while the person has not confirmed
)

// LoginStart is the answer to POST /v1/logins: the URL the person opens and
// what the CLI polls with.
type LoginStart struct {
	ID        string    `json:"id"`
	URL       string    `json:"url"`        // https://fcm.<domain>/login/<id>
	Code      string    `json:"code"`       // unused since logins are bound by a grant (LoginPoll.Grant); ""
	PollToken string    `json:"poll_token"` // secret: only the CLI that started the login gets the token
	Interval  int       `json:"interval"`   // seconds between polls
	ExpiresAt time.Time `json:"expires_at"`
}

// LoginStartRequest is the (optional) body of POST /v1/logins: how the CLI
// receives the result. With Port, the browser is sent back to
// http://127.0.0.1:<Port>/done?grant=<grant> after the person confirms
// (RFC 8252 loopback redirect); without, the page shows a one-time code the
// person types into the CLI. Hostname is shown on the confirm page.
type LoginStartRequest struct {
	Port     int    `json:"port,omitempty"`
	Hostname string `json:"hostname,omitempty"`
}

// LoginPoll is the body of POST /v1/logins/{id}/token.
type LoginPoll struct {
	PollToken string `json:"poll_token"`
	// Grant is what the confirm gave the CLI (the loopback redirect's grant,
	// or the code the page showed); without the right one a poll stays pending.
	Grant string `json:"grant,omitempty"`
}

// LoginStatus is the 202 body while a login waits for the person.
type LoginStatus struct {
	Status string `json:"status"` // "pending"
}

// LoginResult is the 200 body once the person confirmed: a new token (given
// once; the daemon keeps only its hash) and who it is for.
type LoginResult struct {
	Token string `json:"token"`
	User  User   `json:"user"`
}

// User is a person who logged in with OIDC.
type User struct {
	ID          string    `json:"id"`
	Email       string    `json:"email"`
	Name        string    `json:"name,omitempty"`
	Issuer      string    `json:"issuer"`
	Subject     string    `json:"subject"`
	Role        string    `json:"role"`    // "user"
	Allowed     bool      `json:"allowed"` // the allow-list lets them in now
	VMs         []string  `json:"vms,omitempty"`
	Tokens      int       `json:"tokens"`
	CreatedAt   time.Time `json:"created_at"`
	LastLoginAt time.Time `json:"last_login_at,omitempty"`
}

// WhoAmI is the body of GET /v1/whoami.
type WhoAmI struct {
	Role    string `json:"role"` // "admin" or "user"
	TokenID string `json:"token_id"`
	User    *User  `json:"user,omitempty"` // nil for the admin token
}

// Token is an API token as listed (never its secret).
type Token struct {
	ID         string    `json:"id"`
	Name       string    `json:"name,omitempty"`
	Admin      bool      `json:"admin,omitempty"`
	User       string    `json:"user,omitempty"` // the user's email
	Current    bool      `json:"current,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	LastUsedAt time.Time `json:"last_used_at,omitempty"`
	ExpiresAt  time.Time `json:"expires_at,omitempty"` // zero: never (the admin token)
}

// ListTokensResponse is the body of GET /v1/tokens.
type ListTokensResponse struct {
	Tokens []Token `json:"tokens"`
}

// AccessRule is one allow-list entry: an email ("alice@example.com"), a domain
// ("@example.com") or "*" (anyone with a verified email), allowed or denied. An
// email rule outranks a domain rule, which outranks "*"; deny outranks allow at
// the same rank.
type AccessRule struct {
	Pattern string `json:"pattern"`
	Allow   bool   `json:"allow"`
	Source  string `json:"source"` // "flag" (--allow, fixed while the daemon runs) or "api"
}

// AccessRequest is the body of POST /v1/users/allow and /v1/users/deny.
type AccessRequest struct {
	Pattern string `json:"pattern"`
}

// ListUsersResponse is the body of GET /v1/users.
type ListUsersResponse struct {
	Users []User       `json:"users"`
	Rules []AccessRule `json:"rules"`
	OIDC  bool         `json:"oidc"` // logins are enabled
}

// RemoveUserResponse is the body of DELETE /v1/users/{user}.
type RemoveUserResponse struct {
	User          User     `json:"user"`
	TokensRevoked int      `json:"tokens_revoked"`
	VMsDestroyed  []string `json:"vms_destroyed,omitempty"`
	VMsKept       []string `json:"vms_kept,omitempty"` // now owned by the admin
}
