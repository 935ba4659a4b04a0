package buildpack

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/fcmhost/fcm/internal/release"
	"github.com/fcmhost/fcm/internal/supervisor"
)

// Deploy is the guest agent's side of a deploy: it reads a DeployRequest line
// from in (then, for a build, the pushed tree as a tar), builds, and asks the
// supervisor to switch to the release. Progress goes to out. The daemon keeps
// in open while it waits: in reaching its end cancels the deploy.
func Deploy(ctx context.Context, in io.Reader, out io.Writer) error {
	br := bufio.NewReader(in)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("read the deploy request: %w", err)
	}
	var req release.DeployRequest
	if err := json.Unmarshal(line, &req); err != nil {
		return fmt.Errorf("bad deploy request: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	spec := req.Spec
	if req.Build {
		dir := release.BuildDir(spec.Build)
		os.RemoveAll(dir)
		if err := extract(br, dir); err != nil {
			os.RemoveAll(dir)
			return fmt.Errorf("unpack the pushed tree: %w", err)
		}
		go func() { io.Copy(io.Discard, br); cancel() }()
		if err := chownTree(dir); err != nil {
			return err
		}
		b := &Builder{Dir: dir, Build: spec.Build, Env: spec.Env, Out: out, AsApp: true}
		if _, err := b.Run(ctx); err != nil {
			os.RemoveAll(dir)
			if ctx.Err() != nil {
				return fmt.Errorf("build canceled")
			}
			return err
		}
	} else {
		go func() { io.Copy(io.Discard, br); cancel() }()
	}
	reply, err := supervisor.Call(ctx, supervisor.Request{Op: "activate", Spec: spec}, func(l string) { fmt.Fprintln(out, l) })
	if err != nil {
		return err
	}
	if reply.Error != "" {
		if len(reply.Tail) > 0 {
			fmt.Fprintf(out, " !     The app's last lines of output:\n")
			for _, l := range reply.Tail {
				fmt.Fprintf(out, "       %s\n", l)
			}
		}
		return &Error{Msg: reply.Error}
	}
	prune(spec.Build)
	return nil
}

// extract unpacks a tar (git archive's) into dir, refusing paths that leave it.
func extract(r io.Reader, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean(h.Name)
		if filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
			return fmt.Errorf("%q: path outside the tree", h.Name)
		}
		p := filepath.Join(dir, name)
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
		case tar.TypeReg:
			err = writeFile(p, tr, os.FileMode(h.Mode)&0o777)
		case tar.TypeSymlink:
			os.MkdirAll(filepath.Dir(p), 0o755)
			err = os.Symlink(h.Linkname, p)
		}
		if err != nil {
			return err
		}
	}
}

func writeFile(p string, r io.Reader, mode os.FileMode) error {
	os.MkdirAll(filepath.Dir(p), 0o755)
	f, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode|0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// prune keeps the newest builds (and the one just made), and the dependency
// directories they use.
func prune(keep int) {
	entries, _ := os.ReadDir(release.BuildsDir)
	var builds []int
	for _, e := range entries {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			builds = append(builds, n)
		}
	}
	sort.Sort(sort.Reverse(sort.IntSlice(builds)))
	used := map[string]bool{}
	for i, n := range builds {
		if i >= release.KeepBuilds && n != keep {
			os.RemoveAll(release.BuildDir(n))
			continue
		}
		var res release.Result
		data, _ := os.ReadFile(filepath.Join(release.BuildDir(n), release.BuildInfo))
		if json.Unmarshal(data, &res) != nil {
			return // a build we cannot read: keep every dependency directory
		}
		for _, d := range res.Deps {
			used[d] = true
		}
	}
	deps, _ := os.ReadDir(release.DepsDir)
	for _, d := range deps {
		if p := filepath.Join(release.DepsDir, d.Name()); !used[p] {
			os.RemoveAll(p)
		}
	}
}
