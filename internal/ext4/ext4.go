// Package ext4 writes files, directories and symlinks into an ext4 image without
// mounting it, through e2fsprogs' debugfs. fcm uses it to put the guest init into the
// base image and each VM's keys into its disk: no loop device, no mount, no root
// filesystem of the host touched.
package ext4

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// File is one entry to create in the image. Exactly one of Data, Source or Link
// says what it is; Dir makes a directory. Existing entries at Path are replaced.
type File struct {
	Path   string      // absolute path inside the image
	Data   []byte      // contents of a regular file
	Source string      // a host file whose contents are copied (for large files)
	Link   string      // symlink target
	Dir    bool        // make a directory (parents must exist)
	Mode   os.FileMode // permission bits; 0644 (files) or 0755 (dirs) when zero
	UID    int
	GID    int
}

// Write applies files to the ext4 image in one debugfs run, in order.
func Write(ctx context.Context, image string, files []File) error {
	tmp, err := os.MkdirTemp("", "fcm-ext4-")
	if err != nil {
		return fmt.Errorf("write into %s: %w", image, err)
	}
	defer os.RemoveAll(tmp)

	existing, err := existingDirs(ctx, image, files)
	if err != nil {
		return err
	}
	var script bytes.Buffer
	for i, f := range files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return fmt.Errorf("write into %s: bad path %q", image, f.Path)
		}
		if strings.ContainsAny(f.Path+f.Link+f.Source, "\"\n ") {
			return fmt.Errorf("write into %s: path %q: quotes, spaces and newlines are not supported", image, f.Path)
		}
		dir, name := path.Split(f.Path)
		fmt.Fprintf(&script, "cd %s\n", dir)
		mode := f.Mode.Perm()
		switch {
		case f.Dir:
			if mode == 0 {
				mode = 0o755
			}
			// debugfs's mkdir over an existing directory leaks an inode: never do it.
			if !existing[f.Path] {
				fmt.Fprintf(&script, "mkdir %s\n", name)
			}
			fmt.Fprintf(&script, "sif %s mode 0%o\n", name, 0o40000|mode)
		case f.Link != "":
			fmt.Fprintf(&script, "rm %s\n", name)
			fmt.Fprintf(&script, "symlink %s %s\n", name, f.Link)
			continue // a symlink's owner and mode do not matter
		default:
			src := f.Source
			if src == "" {
				src = filepath.Join(tmp, fmt.Sprint(i))
				if err := os.WriteFile(src, f.Data, 0o600); err != nil {
					return fmt.Errorf("write into %s: %w", image, err)
				}
			}
			if mode == 0 {
				mode = 0o644
			}
			fmt.Fprintf(&script, "rm %s\n", name)
			fmt.Fprintf(&script, "write %s %s\n", src, name)
			fmt.Fprintf(&script, "sif %s mode 0%o\n", name, 0o100000|mode)
		}
		fmt.Fprintf(&script, "sif %s uid %d\nsif %s gid %d\n", name, f.UID, name, f.GID)
	}
	cmdFile := filepath.Join(tmp, "commands")
	if err := os.WriteFile(cmdFile, script.Bytes(), 0o600); err != nil {
		return fmt.Errorf("write into %s: %w", image, err)
	}
	out, err := exec.CommandContext(ctx, "debugfs", "-w", "-f", cmdFile, image).CombinedOutput()
	if err != nil {
		return fmt.Errorf("write into %s: debugfs: %w: %s", image, err, bytes.TrimSpace(out))
	}
	// debugfs exits 0 even when a command fails; its complaints are the only signal.
	if problems := complaints(out); problems != "" {
		return fmt.Errorf("write into %s: debugfs: %s", image, problems)
	}
	return nil
}

// complaints returns debugfs's error lines, leaving out the banner, the echo of each
// command, and the expected failure of removing an entry that does not exist yet.
func complaints(out []byte) string {
	var bad []string
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "",
			strings.HasPrefix(line, "debugfs "),
			strings.HasPrefix(line, "debugfs:"),
			strings.HasPrefix(line, "Allocated inode:"),
			strings.HasPrefix(line, "rm: File not found"),
			strings.HasPrefix(line, "rm: Filesystem opened read/write"):
			continue
		}
		bad = append(bad, line)
	}
	return strings.Join(bad, "; ")
}

// existingDirs reports which of the Dir entries already exist in the image.
func existingDirs(ctx context.Context, image string, files []File) (map[string]bool, error) {
	exists := map[string]bool{}
	for _, f := range files {
		if !f.Dir {
			continue
		}
		if strings.ContainsAny(f.Path, "\"\n ") {
			return nil, fmt.Errorf("write into %s: path %q: quotes, spaces and newlines are not supported", image, f.Path)
		}
		out, err := exec.CommandContext(ctx, "debugfs", "-R", "stat "+f.Path, image).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("write into %s: debugfs: %w: %s", image, err, bytes.TrimSpace(out))
		}
		if strings.Contains(string(out), "Type: directory") {
			exists[f.Path] = true
		} else if !strings.Contains(string(out), "File not found") {
			return nil, fmt.Errorf("write into %s: %s exists and is not a directory", image, f.Path)
		}
	}
	return exists, nil
}

// Read returns the contents of one file in the image.
func Read(ctx context.Context, image, file string) ([]byte, error) {
	if !path.IsAbs(file) || strings.ContainsAny(file, "\"\n ") {
		return nil, fmt.Errorf("read %s from %s: bad path", file, image)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "debugfs", "-R", "cat "+file, image)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("read %s from %s: debugfs: %w: %s", file, image, err, bytes.TrimSpace(stderr.Bytes()))
	}
	if p := complaints(stderr.Bytes()); p != "" {
		return nil, fmt.Errorf("read %s from %s: %s", file, image, p)
	}
	return stdout.Bytes(), nil
}
