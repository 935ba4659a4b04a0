package image

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/fcmhost/fcm/images"
	"github.com/fcmhost/fcm/internal/disk"
	"github.com/fcmhost/fcm/internal/ext4"
	"github.com/fcmhost/fcm/internal/vmconf"
)

// rootfsRecipeVersion changes whenever configureRootfs changes what it writes,
// so cached trees made by an older recipe are not reused.
const rootfsRecipeVersion = "rootfs-v2" // v2: the app user

// kernel downloads the kernel package once and keeps vmlinux.bin and the modules.
func (b *builder) kernel(ctx context.Context, a *apt, pkg, version string) (string, error) {
	dir := filepath.Join(b.opts.CacheDir, "kernel-"+safeName(pkg+"_"+version))
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err == nil && !b.opts.Force {
		return dir, nil
	}
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	defer os.RemoveAll(tmp)
	unpacked := filepath.Join(tmp, "deb")
	if err := a.fetch(ctx, pkg, version, unpacked); err != nil {
		return "", err
	}
	vmlinuz, _ := filepath.Glob(filepath.Join(unpacked, "boot", "vmlinuz-*"))
	mods, _ := filepath.Glob(filepath.Join(unpacked, "lib", "modules", "*", "kernel"))
	if len(vmlinuz) != 1 || len(mods) != 1 {
		return "", fmt.Errorf("%s: expected one /boot/vmlinuz-* and one /lib/modules/*/kernel", pkg)
	}
	bz, err := os.ReadFile(vmlinuz[0])
	if err != nil {
		return "", err
	}
	elf, err := extractVmlinux(ctx, bz)
	if err != nil {
		return "", fmt.Errorf("%s: %w", filepath.Base(vmlinuz[0]), err)
	}
	if err := os.WriteFile(filepath.Join(tmp, KernelFile), elf, 0o644); err != nil {
		return "", err
	}
	if err := os.Rename(mods[0], filepath.Join(tmp, "modules")); err != nil {
		return "", err
	}
	os.RemoveAll(unpacked)
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644); err != nil {
		return "", err
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	return dir, nil
}

// initrd writes the busybox initrd: /init, busybox with the applets /init uses,
// and the wanted modules with their dependencies, flat, with their load order.
func (b *builder) initrd(ctx context.Context, a *apt, kernelDir, busyboxVersion string) (string, error) {
	key := hashOf(kernelDir, busyboxVersion, string(images.InitrdInit), strings.Join(images.Modules, ","))
	out := filepath.Join(b.opts.CacheDir, "initrd-"+key[:16]+".img")
	if _, err := os.Stat(out); err == nil && !b.opts.Force {
		return out, nil
	}
	tmp, err := os.MkdirTemp(b.opts.CacheDir, "busybox-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if err := a.fetch(ctx, "busybox-static", busyboxVersion, tmp); err != nil {
		return "", err
	}
	busybox, err := os.ReadFile(filepath.Join(tmp, "bin", "busybox"))
	if err != nil {
		return "", fmt.Errorf("busybox-static: %w", err)
	}
	modDir := filepath.Join(kernelDir, "modules")
	order, err := moduleOrder(modDir, images.Modules)
	if err != nil {
		return "", err
	}

	var buf bytes.Buffer
	c := &cpioWriter{w: &buf}
	for _, d := range []string{"bin", "dev", "proc", "newroot", "base", "rw", "lib", "lib/modules"} {
		c.Dir(d)
	}
	c.CharDev("dev/console", 0o600, 5, 1)
	c.File("bin/busybox", 0o755, busybox)
	for _, applet := range []string{"sh", "mount", "umount", "insmod", "usleep", "switch_root", "echo", "findfs"} {
		c.Symlink("bin/"+applet, "busybox")
	}
	c.File("init", 0o755, images.InitrdInit)
	var names []string
	for _, rel := range order {
		data, err := os.ReadFile(filepath.Join(modDir, rel))
		if err != nil {
			return "", err
		}
		name := strings.TrimSuffix(filepath.Base(rel), ".ko")
		c.File("lib/modules/"+name+".ko", 0o644, data)
		names = append(names, name)
	}
	c.File("lib/modules/order", 0o644, []byte(strings.Join(names, "\n")+"\n"))
	if err := c.Close(); err != nil {
		return "", err
	}
	if err := os.WriteFile(out+".tmp", buf.Bytes(), 0o644); err != nil {
		return "", err
	}
	return out, os.Rename(out+".tmp", out)
}

// rootfsTree runs debootstrap once per recipe and keeps the configured tree, with
// the components measured in it beside it (see components.go).
func (b *builder) rootfsTree(ctx context.Context, key string) (string, error) {
	dir := filepath.Join(b.opts.CacheDir, "rootfs-"+b.opts.Variant+"-"+key[:16])
	if _, err := os.Stat(filepath.Join(dir, ".fcm-complete")); err == nil && !b.opts.Force {
		fmt.Fprintf(b.progress(), "    reusing %s\n", dir)
		return dir, nil
	}
	variant, err := images.Lookup(b.opts.Variant)
	if err != nil {
		return "", err
	}
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	args := []string{"--variant=minbase", "--include=" + strings.Join(variant.Include, ","),
		"--keyring=" + keyring, variant.Suite, tmp, b.opts.Mirror}
	if variant.Script != "" {
		args = append(args, filepath.Join(debootstrapScripts, variant.Script))
	}
	cmd := exec.CommandContext(ctx, "debootstrap", args...)
	var tail lineTail
	cmd.Stdout = &prefixWriter{w: b.progress(), tail: &tail}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Run(); err != nil {
		logFile := b.keepLog(filepath.Join(tmp, "debootstrap", "debootstrap.log"), "debootstrap")
		os.RemoveAll(tmp)
		return "", fmt.Errorf("debootstrap: %w: %s (full log: %s)", err, tail.String(), logFile)
	}
	fail := func(err error) (string, error) {
		os.RemoveAll(tmp)
		return "", err
	}
	if len(variant.Extra) > 0 {
		if err := b.aptInstall(ctx, tmp, variant.Extra); err != nil {
			return fail(err)
		}
	}
	if len(variant.NPM) > 0 {
		if err := b.npmInstall(ctx, tmp, variant.NPM); err != nil {
			return fail(err)
		}
	}
	if err := configureRootfs(tmp); err != nil {
		return fail(err)
	}
	if err := b.addUser(ctx, tmp, images.AppUser); err != nil {
		return fail(err)
	}
	fmt.Fprintf(b.progress(), "    measuring what went in\n")
	comps, err := b.measureTree(ctx, tmp)
	if err != nil {
		return fail(err)
	}
	if err := writeJSON(componentsFile(dir), comps); err != nil {
		return fail(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, ".fcm-complete"), nil, 0o644); err != nil {
		return fail(err)
	}
	os.Remove(treeImageFile(dir)) // made from a tree that is being replaced
	os.RemoveAll(dir)
	return dir, os.Rename(tmp, dir)
}

// debootstrapScripts is where debootstrap keeps a script per release.
const debootstrapScripts = "/usr/share/debootstrap/scripts"

// progress is where tools' output goes while a long stage runs.
func (b *builder) progress() io.Writer {
	if b.opts.Progress == nil {
		return io.Discard
	}
	return b.opts.Progress
}

// rootPath is PATH for commands run in the new root.
const rootPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// inRoot runs a shell script in root with a clean environment (env adds to it) and
// a /proc of its own: in new mount and PID namespaces, so nothing stays mounted in
// the tree and no process outlives the script. Output goes to out.
func inRoot(ctx context.Context, root, script string, out io.Writer, env ...string) error {
	args := []string{"--mount", "--pid", "--fork", "--mount-proc=" + filepath.Join(root, "proc"),
		"chroot", root, "/usr/bin/env", "-i", rootPath, "LANG=C.UTF-8", "HOME=/root"}
	args = append(append(args, env...), "/bin/sh", "-c", script)
	cmd := exec.CommandContext(ctx, "unshare", args...)
	cmd.Stdout, cmd.Stderr = out, out
	return cmd.Run()
}

// useHostResolver gives the new root the host's DNS for downloads; configureRootfs
// replaces it with the guest's.
func useHostResolver(root string) error {
	resolv, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return fmt.Errorf("downloading in the rootfs needs the host's resolver: %w", err)
	}
	os.Remove(filepath.Join(root, "etc/resolv.conf"))
	return os.WriteFile(filepath.Join(root, "etc/resolv.conf"), resolv, 0o644)
}

// aptInstall installs packages in the new root with its own apt-get, with the
// host's resolver and no service starts, then drops the downloaded archives.
func (b *builder) aptInstall(ctx context.Context, root string, pkgs []string) error {
	fmt.Fprintf(b.progress(), "    apt-get install %s\n", strings.Join(pkgs, " "))
	if err := useHostResolver(root); err != nil {
		return err
	}
	policy := filepath.Join(root, "usr/sbin/policy-rc.d")
	if err := os.WriteFile(policy, []byte("#!/bin/sh\nexit 101\n"), 0o755); err != nil {
		return err
	}
	defer os.Remove(policy)
	// Testing's Release file is valid for a week only; a mirror snapshot older than
	// that is still authentic (signed, and every package checked against it).
	const opts = "-o Acquire::Check-Valid-Until=false"
	script := "apt-get -q " + opts + " update && apt-get install -y -q --no-install-recommends " + strings.Join(pkgs, " ") + " && apt-get clean"
	var tail lineTail
	out := &prefixWriter{w: b.progress(), tail: &tail}
	if err := inRoot(ctx, root, script, out, "DEBIAN_FRONTEND=noninteractive"); err != nil {
		return fmt.Errorf("apt-get install in the rootfs: %w: %s", err, tail.String())
	}
	return nil
}

// npmRegistry is where npmInstall gets packages from.
const npmRegistry = "https://registry.npmjs.org/"

// npmInstall installs npm packages globally (/usr/local) with the new root's own
// npm, the host's resolver, proxy settings and CA certificates (what the host
// trusts for its own downloads; they do not stay in the image). Install scripts
// run there too, so packages that ship a native binary per platform (bun, Claude
// Code) end up with it in place; npm's cache is dropped.
func (b *builder) npmInstall(ctx context.Context, root string, pkgs []string) error {
	fmt.Fprintf(b.progress(), "    npm install --global %s\n", strings.Join(pkgs, " "))
	if err := useHostResolver(root); err != nil {
		return err
	}
	const cache, ca = "/tmp/fcm-npm-cache", "/tmp/fcm-host-ca.crt"
	defer os.RemoveAll(filepath.Join(root, cache))
	var env []string
	if data, err := os.ReadFile(hostCABundle); err == nil {
		if err := os.WriteFile(filepath.Join(root, ca), data, 0o644); err != nil {
			return err
		}
		defer os.Remove(filepath.Join(root, ca))
		env = append(env, "npm_config_cafile="+ca, "NODE_EXTRA_CA_CERTS="+ca)
	}
	for _, k := range []string{"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	// npm 12 runs no install scripts unless allowed by name; these are ours, pinned.
	names := make([]string, len(pkgs))
	for i, p := range pkgs {
		names[i] = npmName(p)
	}
	script := "npm install --global --no-fund --no-audit --no-update-notifier --loglevel=warn " +
		"--registry=" + npmRegistry + " --cache=" + cache + " --allow-scripts=" + strings.Join(names, ",") +
		" " + strings.Join(pkgs, " ")
	var tail lineTail
	out := &prefixWriter{w: b.progress(), tail: &tail}
	if err := inRoot(ctx, root, script, out, env...); err != nil {
		return fmt.Errorf("npm install in the rootfs: %w: %s", err, tail.String())
	}
	for _, p := range []string{"root/.npm", "root/.config"} {
		os.RemoveAll(filepath.Join(root, p))
	}
	return nil
}

// npmName drops the version from name@version, keeping a scope's @.
func npmName(spec string) string {
	if i := strings.LastIndex(spec, "@"); i > 0 {
		return spec[:i]
	}
	return spec
}

// hostCABundle is Debian's (and Ubuntu's) bundle of the CA certificates the host trusts.
const hostCABundle = "/etc/ssl/certs/ca-certificates.crt"

// addUser makes the unprivileged account apps run as, with its group and home.
func (b *builder) addUser(ctx context.Context, root string, u images.User) error {
	script := fmt.Sprintf("groupadd --gid %d %s && useradd --uid %d --gid %d --home-dir %s --create-home --shell %s %s",
		u.GID, u.Name, u.UID, u.GID, u.Home, u.Shell, u.Name)
	var out bytes.Buffer
	if err := inRoot(ctx, root, script, &out); err != nil {
		return fmt.Errorf("add user %s: %w: %s", u.Name, err, lastLines(out.String(), 5))
	}
	return nil
}

// keepLog copies a failed tool's log into the cache dir, where it outlives the
// removed build tree, and returns its path.
func (b *builder) keepLog(src, name string) string {
	data, err := os.ReadFile(src)
	if err != nil {
		return "unavailable"
	}
	dst := filepath.Join(b.opts.CacheDir, name+"-"+b.opts.Variant+".log")
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		return "unavailable"
	}
	return dst
}

// sshdConfig is the guest's sshd configuration: key login only, the host key
// and root's login key from the VM's config drive, which fcm-init copies to
// /run/fcm (the base image is shared by every VM and holds no identity). It is
// written with the guest init, so changing it does not redo debootstrap.
const sshdConfig = "# fcm: key login only; the host key and the daemon's key come from the VM's config drive.\n" +
	"PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n" +
	"UsePAM no\nHostKey " + vmconf.HostKeyPath + "\n" +
	"AuthorizedKeysFile .ssh/authorized_keys " + vmconf.AuthorizedKeysDir + "/%u\n" +
	"UseDNS no\nPrintMotd no\nAcceptEnv LANG LC_* TERM COLORTERM\n" +
	"# The daemon's commands share one connection per VM (ps, logs, run, releases).\nMaxSessions 64\n"

// configureRootfs makes the debootstrapped tree an fcm guest: no host keys (each
// VM gets its own at create time; sshdConfig is written with the init), and no
// caches.
func configureRootfs(root string) error {
	hostKeys, _ := filepath.Glob(filepath.Join(root, "etc/ssh/ssh_host_*"))
	for _, k := range hostKeys {
		if err := os.Remove(k); err != nil {
			return err
		}
	}
	files := map[string]string{
		"etc/hostname":    "fcm\n",
		"etc/fstab":       "# fcm-init mounts the pseudo filesystems; / comes from the kernel command line.\n",
		"etc/resolv.conf": "nameserver 1.1.1.1\nnameserver 8.8.8.8\n",
		"etc/motd":        "",
	}
	for name, content := range files {
		p := filepath.Join(root, name)
		os.Remove(p) // resolv.conf may be a copy or a link from the host
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "root/.ssh"), 0o700); err != nil {
		return err
	}
	for _, glob := range []string{"usr/share/doc/*", "usr/share/man/*", "usr/share/info/*",
		"var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/log/*.log"} {
		matches, _ := filepath.Glob(filepath.Join(root, glob))
		for _, m := range matches {
			if err := os.RemoveAll(m); err != nil {
				return err
			}
		}
	}
	return nil
}

// ext4Version changes whenever makeExt4 lays an image out differently (its size,
// mkfs options), so cached tree images made the old way are not reused.
const ext4Version = "ext4-v2"

// treeImageFile is where a cached tree's ext4 image is kept, beside the tree.
func treeImageFile(treeDir string) string { return treeDir + "." + ext4Version + ".img" }

// treeImage makes the ext4 image of a cached tree once, without the guest init:
// mkfs.ext4 takes a while over a full tree, a sparse copy of its image (or a
// reflink) much less, so a build where only fcm changed stays quick.
func (b *builder) treeImage(ctx context.Context, tree string) (string, error) {
	out := treeImageFile(tree)
	if _, err := os.Stat(out); err == nil && !b.opts.Force {
		return out, nil
	}
	tmp := out + ".tmp"
	defer os.Remove(tmp)
	if err := makeExt4(ctx, tree, tmp); err != nil {
		return "", err
	}
	return out, os.Rename(tmp, out)
}

// makeExt4 writes the tree into a sparse ext4 image with a little room.
func makeExt4(ctx context.Context, tree, out string) error {
	used, err := diskUsage(tree, map[fileID]bool{})
	if err != nil {
		return err
	}
	// Room for ext4's own metadata and a little more. VMs never write to it (it
	// is the read-only lower layer of their root), so it holds just the tree.
	const mib = 1 << 20
	size := int64(float64(used)*1.1) + 128*mib
	size = (size + 64*mib - 1) / (64 * mib) * (64 * mib)
	os.Remove(out)
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	f.Close()
	if err := os.Truncate(out, size); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", "fcm-root", "-d", tree, out)
	if output, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4: %w: %s", err, lastLines(string(output), 5))
	}
	return nil
}

// imageWithInit copies the tree's image to out and adds the guest init (the fcm
// binary) as /sbin/init, leaving the cached tree and its image as they were.
func imageWithInit(ctx context.Context, tree, treeImg, out, initBinary string) error {
	os.Remove(out)
	if _, err := disk.Clone(ctx, treeImg, out); err != nil {
		return err
	}
	if err := os.Chmod(out, 0o644); err != nil {
		return err
	}
	sbin := "/sbin"
	if fi, err := os.Lstat(filepath.Join(tree, "sbin")); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		sbin = "/usr/sbin" // merged /usr: /sbin is a link to usr/sbin
	}
	return ext4.Write(ctx, out, []ext4.File{
		{Path: sbin + "/fcm-init", Source: initBinary, Mode: 0o755},
		{Path: sbin + "/init", Link: "fcm-init"},
		{Path: sbin + "/poweroff", Link: "fcm-init"}, // guestinit.PowerCommands
		{Path: sbin + "/halt", Link: "fcm-init"},
		{Path: sbin + "/reboot", Link: "fcm-init"},
		{Path: "/etc/ssh/sshd_config.d/fcm.conf", Data: []byte(sshdConfig), Mode: 0o644},
	})
}

// safeName keeps a package name and version usable as a file name.
func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
			return r
		}
		return '_'
	}, s)
}

// prefixWriter indents a tool's output under the stage line and remembers its end.
type prefixWriter struct {
	w    io.Writer
	tail *lineTail
	buf  []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		line := string(p.buf[:i])
		p.buf = p.buf[i+1:]
		p.tail.add(line)
		fmt.Fprintf(p.w, "    %s\n", line)
	}
	return len(b), nil
}

// lineTail keeps the last lines of output for error messages.
type lineTail struct{ lines []string }

func (t *lineTail) add(line string) {
	t.lines = append(t.lines, line)
	if len(t.lines) > 5 {
		t.lines = t.lines[1:]
	}
}

func (t *lineTail) String() string { return strings.Join(t.lines, " | ") }
