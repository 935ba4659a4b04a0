package image

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// Component is one thing that went into an image, as measured in the built tree:
// its version from running it, its size from the files it installed. The manifest
// lists them and `fcm image build` prints them as a table.
type Component struct {
	Component string `json:"component"`
	Version   string `json:"version"`
	Bytes     int64  `json:"bytes"`
}

// ImageComponent names the last row, the ext4 image as a whole; its Bytes are the
// filesystem's used bytes.
const ImageComponent = "image"

// probeVersion changes whenever measureTree measures differently, so cached
// measurements are redone and images with the old ones are rebuilt.
const probeVersion = "probe-v1"

// componentsFile is where a cached rootfs tree's measurements are kept: beside the
// tree, not in it, so they do not end up in the image.
func componentsFile(treeDir string) string { return treeDir + "." + probeVersion + ".json" }

// probe says how to find one component in a tree: commands whose output holds its
// version, and which Debian packages and directories make up its size.
type probe struct {
	name   string
	cmds   []string                // the row exists when the first one's command does
	format func(v []string) string // the versions parsed from each command's output
	owns   func(pkg string) bool
	dirs   []string // relative to the root, for what npm installed
}

func joinVersions(sep string) func([]string) string {
	return func(v []string) string { return strings.Join(v, sep) }
}

// probes are the rows after Debian and Python, in the order they are printed.
var probes = []probe{
	{name: "Node.js", cmds: []string{"node --version", "npm --version"}, format: joinVersions(" / npm "),
		owns: func(p string) bool {
			return p == "nodejs" || p == "npm" || strings.HasPrefix(p, "libnode") || strings.HasPrefix(p, "node-")
		}},
	{name: "Ruby", cmds: []string{"ruby --version", "bundle --version"}, format: joinVersions(" / Bundler "),
		owns: func(p string) bool { return strings.HasPrefix(p, "ruby") || strings.HasPrefix(p, "libruby") }},
	{name: "Bun", cmds: []string{"bun --version"}, format: joinVersions(""), dirs: []string{"usr/local/lib/node_modules/bun"}},
	{name: "Claude Code", cmds: []string{"claude --version"}, format: joinVersions(""),
		dirs: []string{"usr/local/lib/node_modules/@anthropic-ai"}},
	{name: "tmux", cmds: []string{"tmux -V"}, format: joinVersions(""), owns: func(p string) bool { return p == "tmux" }},
	{name: "git", cmds: []string{"git --version"}, format: joinVersions(""),
		owns: func(p string) bool { return p == "git" || p == "git-man" }},
}

// errNoCommand says a probe's command is not in the tree.
var errNoCommand = errors.New("not installed")

// runProbe runs one `cmd --version` in the root and returns the version in its
// output, or errNoCommand.
func runProbe(ctx context.Context, root, cmd string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	name, _, _ := strings.Cut(cmd, " ")
	script := fmt.Sprintf("command -v %s >/dev/null 2>&1 || exit 127; exec %s", name, cmd)
	var out bytes.Buffer
	err := inRoot(ctx, root, script, &out, "HOME="+probeHome, "TERM=dumb", "NO_COLOR=1",
		"DISABLE_AUTOUPDATER=1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1")
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 127 {
		return "", errNoCommand
	}
	if err != nil {
		return "", fmt.Errorf("%s in the rootfs: %w: %s", cmd, err, lastLines(out.String(), 3))
	}
	v := parseVersion(out.String())
	if v == "" {
		return "", fmt.Errorf("%s in the rootfs: no version in %q", cmd, lastLines(out.String(), 3))
	}
	return v, nil
}

// probeHome is HOME while probing, removed afterwards: some tools write a dot file
// on their first run.
const probeHome = "/tmp/fcm-probe"

// measureTree measures a configured tree: Debian's release, each component that
// is installed, and the rest of the tree as Debian's row. A command that exists
// but fails is an error: the image would ship broken.
func (b *builder) measureTree(ctx context.Context, root string) ([]Component, error) {
	pkgs, err := installedPackages(root)
	if err != nil {
		return nil, err
	}
	seen := map[fileID]bool{}
	pkgBytes := map[string]int64{}
	for _, p := range pkgs {
		for _, f := range p.files {
			pkgBytes[p.name] += fileUsage(filepath.Join(root, f), seen)
		}
	}
	sumPkgs := func(owns func(string) bool) int64 {
		var n int64
		for _, p := range pkgs {
			if owns != nil && owns(p.name) {
				n += pkgBytes[p.name]
			}
		}
		return n
	}

	var rows []Component
	pythons, err := b.measurePythons(ctx, root, sumPkgs)
	if err != nil {
		return nil, err
	}
	rows = append(rows, pythons...)
	for _, pr := range probes {
		var versions []string
		for i, cmd := range pr.cmds {
			v, err := runProbe(ctx, root, cmd)
			if errors.Is(err, errNoCommand) && i == 0 {
				break
			}
			if err != nil {
				return nil, err
			}
			versions = append(versions, v)
		}
		if len(versions) == 0 {
			continue
		}
		n := sumPkgs(pr.owns)
		for _, d := range pr.dirs {
			u, err := diskUsage(filepath.Join(root, d), seen)
			if err != nil {
				return nil, err
			}
			n += u
		}
		rows = append(rows, Component{Component: pr.name, Version: pr.format(versions), Bytes: n})
	}

	// What the tools left behind (node's compile cache) has no place in an image.
	if err := emptyDir(filepath.Join(root, "tmp")); err != nil {
		return nil, err
	}
	total, err := diskUsage(root, map[fileID]bool{})
	if err != nil {
		return nil, err
	}
	debian := Component{Component: "Debian", Version: readRelease(root), Bytes: total}
	for _, r := range rows {
		debian.Bytes -= r.Bytes
	}
	return append([]Component{debian}, rows...), nil
}

// emptyDir removes what is in dir, keeping dir.
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// measurePythons makes a row per python3.N interpreter, newest first. Packages
// named for a version (python3.13-venv, libpython3.13-stdlib) count for it; the
// unversioned ones (python3, python3-pip) for the version python3 runs.
func (b *builder) measurePythons(ctx context.Context, root string, sumPkgs func(func(string) bool) int64) ([]Component, error) {
	bins, _ := filepath.Glob(filepath.Join(root, "usr/bin/python3.*"))
	var minors []string
	for _, p := range bins {
		if m := pythonMinor(filepath.Base(p)); m != "" && filepath.Base(p) == "python"+m {
			minors = append(minors, m)
		}
	}
	sort.Slice(minors, func(i, j int) bool { return versionLess(minors[j], minors[i]) })
	def := ""
	if target, err := os.Readlink(filepath.Join(root, "usr/bin/python3")); err == nil {
		def = pythonMinor(filepath.Base(target))
	}
	var rows []Component
	for _, m := range minors {
		v, err := runProbe(ctx, root, "python"+m+" --version")
		if err != nil {
			return nil, err
		}
		owns := func(p string) bool {
			pm := pythonMinor(p)
			return pm == m || (pm == "" && m == def && isPythonPackage(p))
		}
		rows = append(rows, Component{Component: "Python", Version: v, Bytes: sumPkgs(owns)})
	}
	return rows, nil
}

var pythonMinorRE = regexp.MustCompile(`^(?:lib)?python(3\.\d+)(?:-|$)`)

// pythonMinor returns the version a Python package or command is named for
// ("3.13" for python3.13-venv and libpython3.13-stdlib), or "".
func pythonMinor(name string) string {
	if m := pythonMinorRE.FindStringSubmatch(name); m != nil {
		return m[1]
	}
	return ""
}

func isPythonPackage(name string) bool {
	return strings.HasPrefix(name, "python3") || strings.HasPrefix(name, "libpython3")
}

var versionRE = regexp.MustCompile(`(?:^|[\s(])v?(\d+\.\d+[0-9A-Za-z.+~]*)`)

// parseVersion finds the first version number in a tool's --version output:
// "Python 3.14.7", "v24.11.0", "ruby 3.3.8 (2025-04-09 revision b200bad6cd)",
// "tmux 3.5a", "2.1.3 (Claude Code)" -> 3.14.7, 24.11.0, 3.3.8, 3.5a, 2.1.3.
func parseVersion(out string) string {
	m := versionRE.FindStringSubmatch(out)
	if m == nil {
		return ""
	}
	return strings.TrimRight(m[1], ".")
}

// versionLess compares dotted versions numerically, field by field.
func versionLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) && i < len(bs); i++ {
		x, errx := strconv.Atoi(as[i])
		y, erry := strconv.Atoi(bs[i])
		if errx != nil || erry != nil {
			if as[i] != bs[i] {
				return as[i] < bs[i]
			}
			continue
		}
		if x != y {
			return x < y
		}
	}
	return len(as) < len(bs)
}

// readRelease names the tree's Debian release from /etc/debian_version and
// /etc/os-release.
func readRelease(root string) string {
	dv, _ := os.ReadFile(filepath.Join(root, "etc/debian_version"))
	osr, _ := os.ReadFile(filepath.Join(root, "etc/os-release"))
	return debianRelease(string(dv), osReleaseField(string(osr), "VERSION_CODENAME"))
}

// debianRelease formats a release: "12.11 (bookworm)" for a stable point release,
// "forky (testing)" while debian_version says "forky/sid".
func debianRelease(debianVersion, codename string) string {
	dv := strings.TrimSpace(debianVersion)
	if codename == "" {
		codename, _, _ = strings.Cut(dv, "/")
	}
	switch {
	case dv == "":
		return codename
	case dv[0] >= '0' && dv[0] <= '9':
		return dv + " (" + codename + ")"
	case codename == "sid":
		return "sid (unstable)"
	}
	return codename + " (testing)"
}

// osReleaseField reads KEY=value (quoted or not) from an os-release file.
func osReleaseField(osRelease, key string) string {
	sc := bufio.NewScanner(strings.NewReader(osRelease))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key+"="); ok {
			return strings.Trim(v, `"'`)
		}
	}
	return ""
}

// dpkgPackage is an installed package and the files it put in the tree.
type dpkgPackage struct {
	name  string
	files []string // absolute inside the tree
}

// installedPackages reads dpkg's database in the tree: the installed packages
// from its status file and each one's file list.
func installedPackages(root string) ([]dpkgPackage, error) {
	status, err := os.ReadFile(filepath.Join(root, "var/lib/dpkg/status"))
	if err != nil {
		return nil, fmt.Errorf("read dpkg status: %w", err)
	}
	var pkgs []dpkgPackage
	for _, p := range parseDpkgStatus(string(status)) {
		list, err := os.ReadFile(filepath.Join(root, "var/lib/dpkg/info", p[0]+":"+p[1]+".list"))
		if errors.Is(err, fs.ErrNotExist) {
			list, err = os.ReadFile(filepath.Join(root, "var/lib/dpkg/info", p[0]+".list"))
		}
		if err != nil {
			return nil, fmt.Errorf("files of %s: %w", p[0], err)
		}
		var files []string
		for _, f := range strings.Split(string(list), "\n") {
			if f != "" {
				files = append(files, f)
			}
		}
		pkgs = append(pkgs, dpkgPackage{name: p[0], files: files})
	}
	return pkgs, nil
}

// parseDpkgStatus returns {name, architecture} of each installed package in a
// dpkg status file.
func parseDpkgStatus(status string) [][2]string {
	var out [][2]string
	for _, stanza := range strings.Split(status, "\n\n") {
		var name, arch, state string
		for _, line := range strings.Split(stanza, "\n") {
			k, v, ok := strings.Cut(line, ": ")
			if !ok {
				continue
			}
			switch k {
			case "Package":
				name = v
			case "Architecture":
				arch = v
			case "Status":
				state = v
			}
		}
		if name != "" && strings.HasSuffix(state, " installed") {
			out = append(out, [2]string{name, arch})
		}
	}
	return out
}

// fileID identifies a file across hard links.
type fileID struct{ dev, ino uint64 }

// fileUsage returns the blocks a regular file occupies, once per file however
// many names it has (Claude Code's binary is hard-linked), as du counts.
func fileUsage(path string, seen map[fileID]bool) int64 {
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return 0
	}
	return usageOf(fi, seen)
}

func usageOf(fi fs.FileInfo, seen map[fileID]bool) int64 {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fi.Size()
	}
	id := fileID{uint64(st.Dev), st.Ino}
	if st.Nlink > 1 {
		if seen[id] {
			return 0
		}
		seen[id] = true
	}
	return st.Blocks * 512
}

// diskUsage sums the blocks of everything under root, as du does.
func diskUsage(root string, seen map[fileID]bool) (int64, error) {
	var total int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		total += usageOf(info, seen)
		return nil
	})
	return total, err
}

// kernelComponent describes the kernel from its package: "6.1.158 (cloud)", with
// the kernel and initrd as its size (they are outside the rootfs).
func kernelComponent(pkg, version string, files ...string) Component {
	upstream := version
	if i := strings.LastIndex(upstream, "-"); i > 0 {
		upstream = upstream[:i]
	}
	if i := strings.Index(upstream, ":"); i >= 0 {
		upstream = upstream[i+1:]
	}
	flavour := ""
	if i := strings.LastIndex(pkg, "-cloud-"); i >= 0 {
		flavour = " (cloud)"
	}
	c := Component{Component: "Linux kernel", Version: upstream + flavour}
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil {
			c.Bytes += fi.Size()
		}
	}
	return c
}

// imageComponent describes the ext4 image: its size and what its filesystem uses.
func imageComponent(ctx context.Context, path string) (Component, error) {
	out, err := exec.CommandContext(ctx, "dumpe2fs", "-h", path).Output()
	if err != nil {
		return Component{}, fmt.Errorf("dumpe2fs %s: %w", path, err)
	}
	used, size, err := parseDumpe2fs(string(out))
	if err != nil {
		return Component{}, fmt.Errorf("dumpe2fs %s: %w", path, err)
	}
	return Component{Component: ImageComponent, Bytes: used,
		Version: fmt.Sprintf("ext4, %d MiB used of %d MiB", used>>20, size>>20)}, nil
}

// parseDumpe2fs reads the used and total bytes from `dumpe2fs -h`.
func parseDumpe2fs(out string) (used, size int64, err error) {
	fields := map[string]int64{}
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch k {
		case "Block count", "Free blocks", "Block size":
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, 0, fmt.Errorf("%s: %w", k, err)
			}
			fields[k] = n
		}
	}
	if len(fields) != 3 {
		return 0, 0, errors.New("no block count, free blocks and block size")
	}
	bs := fields["Block size"]
	return (fields["Block count"] - fields["Free blocks"]) * bs, fields["Block count"] * bs, nil
}

// assemble orders an image's components as they are printed: Debian, the kernel,
// what the rootfs has, the image.
func assemble(tree []Component, kernel, img Component) []Component {
	out := make([]Component, 0, len(tree)+2)
	if len(tree) > 0 {
		out = append(out, tree[0])
	}
	out = append(out, kernel)
	if len(tree) > 1 {
		out = append(out, tree[1:]...)
	}
	return append(out, img)
}

// treeComponents returns a cached tree's measurements, measuring it again when
// they are missing or unreadable.
func (b *builder) treeComponents(ctx context.Context, tree string) ([]Component, error) {
	path := componentsFile(tree)
	if data, err := os.ReadFile(path); err == nil {
		var c []Component
		if err := json.Unmarshal(data, &c); err == nil {
			return c, nil
		}
	}
	fmt.Fprintf(b.progress(), "    measuring what went in\n")
	c, err := b.measureTree(ctx, tree)
	if err != nil {
		return nil, err
	}
	return c, writeJSON(path, c)
}

// WriteTable prints components as an aligned table with a header. The image's
// row says its sizes in its version column and leaves SIZE empty.
func WriteTable(w io.Writer, comps []Component) error {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "COMPONENT\tVERSION\tSIZE")
	for _, c := range comps {
		size := FormatBytes(c.Bytes)
		if c.Component == ImageComponent {
			size = ""
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Component, c.Version, size)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, line := range strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n") {
		if _, err := fmt.Fprintln(w, strings.TrimRight(line, " ")); err != nil {
			return err
		}
	}
	return nil
}

// FormatBytes says a size in the binary unit that suits it: 512 B, 7.5 MiB, 312 MiB, 1.9 GiB.
func FormatBytes(n int64) string {
	const kib, mib, gib = 1 << 10, 1 << 20, 1 << 30
	switch {
	case n < kib:
		return fmt.Sprintf("%d B", n)
	case n < mib:
		return fmt.Sprintf("%d KiB", (n+kib/2)/kib)
	case n < 10*mib:
		return fmt.Sprintf("%.1f MiB", float64(n)/mib)
	case n < gib:
		return fmt.Sprintf("%d MiB", (n+mib/2)/mib)
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/gib)
}
