package client

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestDaemonVersion(t *testing.T) {
	// A daemon that says its version to a valid token only, as fcm's does.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer good" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"error":"invalid token","code":"unauthorized"}`))
			return
		}
		w.Header().Set("Fcm-Version", "v1.3.0")
		w.Write([]byte(`{"vms":[]}`))
	}))
	defer srv.Close()
	ctx := context.Background()

	bad := &Client{Host: srv.URL, Token: "bad"}
	if _, err := bad.ListVMs(ctx); err == nil {
		t.Fatal("a bad token was accepted")
	}
	if host, v := DaemonVersion(); v != "" {
		t.Fatalf("before any valid answer: DaemonVersion = %q, %q", host, v)
	}

	good := &Client{Host: srv.URL, Token: "good"}
	if _, err := good.ListVMs(ctx); err != nil {
		t.Fatal(err)
	}
	if host, v := DaemonVersion(); host != srv.URL || v != "v1.3.0" {
		t.Errorf("DaemonVersion = %q, %q; want %q, v1.3.0", host, v, srv.URL)
	}
	// A later answer without the header does not forget it.
	bad.ListVMs(ctx)
	if _, v := DaemonVersion(); v != "v1.3.0" {
		t.Errorf("after an answer without the header: %q", v)
	}
}
