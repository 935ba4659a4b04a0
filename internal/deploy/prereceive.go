package deploy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
)

// PreReceive is the hook git runs before it moves a branch (`fcm hook
// pre-receive`): it checks the pushed refs, sends the pushed tree to the
// daemon, and prints the build's output as it comes. A non-zero result rejects
// the push, so the branch stays where it was.
func PreReceive(ctx context.Context, stdin io.Reader, stdout io.Writer) int {
	updates, err := ReadRefUpdates(stdin)
	if err != nil {
		fmt.Fprintf(stdout, " !     %v\n", err)
		return 1
	}
	u, err := DeployRef(updates)
	if err != nil {
		fmt.Fprintf(stdout, " !     %v\n", err)
		return 1
	}
	url, token := os.Getenv("FCM_DAEMON_URL"), os.Getenv("FCM_PUSH_TOKEN")
	if url == "" || token == "" {
		fmt.Fprintln(stdout, " !     this hook runs only inside a push served by fcm")
		return 1
	}
	// The pushed objects are in git's quarantine: read them here, in the hook's
	// environment, and stream the tree.
	archive := exec.CommandContext(ctx, "git", "archive", "--format=tar", u.New)
	tree, err := archive.StdoutPipe()
	if err != nil {
		fmt.Fprintf(stdout, " !     %v\n", err)
		return 1
	}
	var archiveErr strings.Builder
	archive.Stderr = &archiveErr
	if err := archive.Start(); err != nil {
		fmt.Fprintf(stdout, " !     git archive: %v\n", err)
		return 1
	}
	defer archive.Wait()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/internal/push", tree)
	if err != nil {
		fmt.Fprintf(stdout, " !     %v\n", err)
		return 1
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Fcm-Commit", u.New)
	req.Header.Set("Fcm-Ref", u.Ref)
	req.Header.Set("Fcm-Old", u.Old)
	req.Header.Set("Content-Type", "application/x-tar")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(stdout, " !     the fcm daemon did not answer: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		fmt.Fprintf(stdout, " !     the fcm daemon refused the push: %s\n", strings.TrimSpace(string(msg)))
		return 1
	}
	if _, err := io.Copy(stdout, resp.Body); err != nil {
		fmt.Fprintf(stdout, " !     lost the fcm daemon during the deploy: %v\n", err)
		return 1
	}
	if resp.Trailer.Get("Fcm-Exit") != "0" {
		return 1
	}
	return 0
}
