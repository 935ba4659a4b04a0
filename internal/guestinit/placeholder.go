package guestinit

import (
	"context"
	"fmt"
	"html"
	"log"
	"net/http"
	"os"
)

// ServePlaceholder answers every request on port 3000 with a page saying the VM is
// up and no app is deployed yet. A deploy stops it (its pid is in PlaceholderPID).
// It returns when ctx ends.
func ServePlaceholder(ctx context.Context) error {
	log.SetFlags(0)
	log.SetPrefix("fcm-placeholder: ")
	host, _ := os.Hostname()
	page := fmt.Sprintf(`<!doctype html>
<html><head><meta charset="utf-8"><title>%[1]s</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 4em auto">
<h1>%[1]s is running</h1>
<p>This VM has no app yet. Deploy one with <code>git push</code>; it will be served here on port %[2]d.</p>
<p><small>fcm placeholder</small></p>
</body></html>
`, html.EscapeString(host), PlaceholderPort)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("X-Fcm-Placeholder", "1")
		fmt.Fprint(w, page)
	})
	log.Printf("placeholder page on :%d", PlaceholderPort)
	srv := &http.Server{Addr: fmt.Sprintf(":%d", PlaceholderPort), Handler: mux}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.ListenAndServe(); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}
