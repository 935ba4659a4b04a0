package oidctest

// User is an account of the test provider.
type User struct {
	Username      string
	Password      string
	Subject       string // the "sub" claim: stable, like Google's numeric IDs
	Email         string
	Name          string
	EmailVerified bool
}

// The provider's accounts. Tests log in with Username and Password and
// check the claims against the other fields.
var (
	Alice = User{Username: "alice", Password: "alice-pw", Subject: "100000000000000000001",
		Email: "alice@example.com", Name: "Alice Liddell", EmailVerified: true}
	Bob = User{Username: "bob", Password: "bob-pw", Subject: "100000000000000000002",
		Email: "bob@example.com", Name: "Bob Builder", EmailVerified: true}
	Carol = User{Username: "carol", Password: "carol-pw", Subject: "100000000000000000003",
		Email: "carol@other.org", Name: "Carol Danvers", EmailVerified: true}
)

// Users holds every account by username.
var Users = map[string]User{
	Alice.Username: Alice,
	Bob.Username:   Bob,
	Carol.Username: Carol,
}

// userBySubject finds the account with the given sub claim.
func userBySubject(sub string) (User, bool) {
	for _, u := range Users {
		if u.Subject == sub {
			return u, true
		}
	}
	return User{}, false
}
