package oidctest

import (
	"context"
	"html/template"
	"net/http"
)

// The login form's path and the query parameter that names the request.
const (
	loginPath    = "/login"
	loginParamID = "authRequestID"
)

var loginPage = template.Must(template.New("login").Parse(`<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>oidctest: sign in</title></head>
<body>
<h1>Sign in to the test provider</h1>
<form method="post" action="` + loginPath + `">
<input type="hidden" name="id" value="{{.ID}}">
<p><label for="username">Username</label> <input id="username" name="username" value="{{.Username}}" autocomplete="username"></p>
<p><label for="password">Password</label> <input id="password" name="password" type="password" autocomplete="current-password"></p>
{{if .Error}}<p id="login-error" style="color: red">{{.Error}}</p>{{end}}
<p><button id="submit" type="submit">Sign in</button></p>
</form>
</body>
</html>
`))

// loginForm serves the provider's own sign-in page. A correct username and
// password finish the login and send the browser to the op's callback, which
// redirects to the relying party with a code.
type loginForm struct {
	storage  *storage
	callback func(ctx context.Context, requestID string) string
}

func (l *loginForm) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		id := r.URL.Query().Get(loginParamID)
		if id == "" {
			http.Error(w, "missing "+loginParamID, http.StatusBadRequest)
			return
		}
		render(w, http.StatusOK, id, "", "")
	case http.MethodPost:
		id, user := r.PostFormValue("id"), r.PostFormValue("username")
		if err := l.storage.login(id, user, r.PostFormValue("password")); err != nil {
			render(w, http.StatusUnauthorized, id, user, err.Error())
			return
		}
		http.Redirect(w, r, l.callback(r.Context(), id), http.StatusFound)
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

func render(w http.ResponseWriter, status int, id, username, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = loginPage.Execute(w, struct{ ID, Username, Error string }{id, username, msg})
}
