// Package image builds fcm's guest image without Docker: Debian's cloud kernel as an
// uncompressed ELF (vmlinux.bin), a tiny busybox initrd that loads the virtio modules
// (initrd.img), and an ext4 root filesystem made by debootstrap and `mkfs.ext4 -d`
// (base-rootfs.img) whose /sbin/init is fcm itself. Slow stages are cached by a hash
// of their recipe, so a second build takes seconds.
package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/fcmhost/fcm/images"
)

// File names of a built image inside its directory.
const (
	KernelFile   = "vmlinux.bin"
	InitrdFile   = "initrd.img"
	RootfsFile   = "base-rootfs.img"
	ManifestFile = "image.json"
)

// Default locations.
const (
	DefaultOutDir   = "/var/lib/firecracker"
	DefaultCacheDir = "/var/cache/fcm"
	DefaultMirror   = "http://deb.debian.org/debian"
)

// Options say what to build and where.
type Options struct {
	Variant    string    // minimal or full
	OutDir     string    // where vmlinux.bin, initrd.img, base-rootfs.img go
	CacheDir   string    // where slow stages are kept between builds
	Mirror     string    // Debian mirror for debootstrap and the kernel
	InitBinary string    // the fcm binary to install as the guest's /sbin/init
	Force      bool      // rebuild every stage, ignoring caches
	Progress   io.Writer // one line per stage; nil for none
}

// Manifest describes a built image; it is written as image.json beside the files.
type Manifest struct {
	// ID is the image's content hash (of its kernel, initrd and rootfs): the
	// name the daemon stores it under, shared by every VM made from it.
	ID         string      `json:"id"`
	Variant    string      `json:"variant"`
	Suite      string      `json:"suite"`  // the rootfs's Debian release
	Kernel     string      `json:"kernel"` // package=version, from images.KernelSuite
	Recipe     string      `json:"recipe"` // hash of everything the image is made from
	Built      time.Time   `json:"built"`
	Packages   []string    `json:"packages"`
	NPM        []string    `json:"npm,omitempty"`        // global npm packages, name@version
	Components []Component `json:"components,omitempty"` // what went in, measured
}

// ErrNotRoot and ErrMissingTool are returned before any work starts.
var (
	ErrNotRoot     = errors.New("building the guest image needs root (debootstrap and device files): run it with sudo")
	ErrMissingTool = errors.New("missing tool")
)

// requiredTools maps each host command the build runs to the package providing it.
var requiredTools = map[string]string{
	"debootstrap": "debootstrap",
	"apt-get":     "apt",
	"dpkg-deb":    "dpkg",
	"mkfs.ext4":   "e2fsprogs",
	"debugfs":     "e2fsprogs",
	"dumpe2fs":    "e2fsprogs",
	"chroot":      "coreutils",
	"unshare":     "util-linux",
	"lz4":         "lz4",
}

// CheckHost reports what stops a build on this host: not root, or missing tools.
func CheckHost() error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	var missing, pkgs []string
	for tool, pkg := range requiredTools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
			if !slices.Contains(pkgs, pkg) {
				pkgs = append(pkgs, pkg)
			}
		}
	}
	if _, err := os.Stat(keyring); err != nil {
		missing = append(missing, keyring)
		pkgs = append(pkgs, "debian-archive-keyring")
	}
	slices.Sort(missing)
	slices.Sort(pkgs)
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s not found; install with: apt-get install -y %s",
			ErrMissingTool, strings.Join(missing, ", "), strings.Join(pkgs, " "))
	}
	return nil
}

// Build makes the image in opts.OutDir, reusing cached stages, and returns its
// manifest. It leaves the previous image in place until the new one is complete.
func Build(ctx context.Context, opts Options) (*Manifest, error) {
	opts.setDefaults()
	variant, err := images.Lookup(opts.Variant)
	if err != nil {
		return nil, err
	}
	packages, err := images.Packages(opts.Variant)
	if err != nil {
		return nil, err
	}
	if err := CheckHost(); err != nil {
		return nil, err
	}
	initSum, err := fileHash(opts.InitBinary)
	if err != nil {
		return nil, fmt.Errorf("guest init %s: %w", opts.InitBinary, err)
	}
	for _, d := range []string{opts.OutDir, opts.CacheDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	b := &builder{opts: opts, packages: packages, start: time.Now()}

	b.stage("resolving the kernel (%s from Debian %s)", images.KernelPackage, images.KernelSuite)
	a, err := newApt(opts.CacheDir, opts.Mirror, images.KernelSuite)
	if err != nil {
		return nil, err
	}
	if err := a.update(ctx); err != nil {
		return nil, fmt.Errorf("read Debian's package index: %w", err)
	}
	kpkg, kver, err := a.resolve(ctx, images.KernelPackage)
	if err != nil {
		return nil, err
	}
	bbver, err := a.version(ctx, "busybox-static")
	if err != nil {
		return nil, err
	}

	b.stage("kernel %s=%s", kpkg, kver)
	kdir, err := b.kernel(ctx, a, kpkg, kver)
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}

	b.stage("initrd (busybox-static %s + %d kernel modules and their dependencies)", bbver, len(images.Modules))
	initrd, err := b.initrd(ctx, a, kdir, bbver)
	if err != nil {
		return nil, fmt.Errorf("initrd: %w", err)
	}

	u := images.AppUser
	rootKey := hashOf(variant.Suite, variant.Script, opts.Mirror, strings.Join(variant.Include, ","),
		strings.Join(variant.Extra, ","), strings.Join(variant.NPM, ","),
		fmt.Sprint(u.Name, u.UID, u.GID, u.Home, u.Shell), rootfsRecipeVersion, probeVersion)
	recipe := hashOf(rootKey, images.KernelSuite, kpkg, kver, bbver, initSum, string(images.InitrdInit),
		strings.Join(images.Modules, ","))
	m := &Manifest{Variant: opts.Variant, Suite: variant.Suite, Kernel: kpkg + "=" + kver,
		Recipe: recipe, Packages: packages, NPM: variant.NPM}
	if old, err := ReadManifest(opts.OutDir); err == nil && old.Recipe == recipe && !opts.Force && b.complete() {
		b.stage("image in %s is up to date (recipe %s)", opts.OutDir, recipe[:12])
		return old, nil
	}

	b.stage("root filesystem: debootstrap %s %s (cached after the first build)", variant.Suite, opts.Variant)
	tree, err := b.rootfsTree(ctx, rootKey)
	if err != nil {
		return nil, fmt.Errorf("rootfs: %w", err)
	}
	treeComps, err := b.treeComponents(ctx, tree)
	if err != nil {
		return nil, fmt.Errorf("rootfs: %w", err)
	}

	b.stage("ext4 image with fcm as /sbin/init (the tree's image is cached too)")
	treeImg, err := b.treeImage(ctx, tree)
	if err != nil {
		return nil, fmt.Errorf("rootfs image: %w", err)
	}
	tmpRoot := filepath.Join(opts.OutDir, "."+RootfsFile+".tmp")
	defer os.Remove(tmpRoot)
	if err := imageWithInit(ctx, tree, treeImg, tmpRoot, opts.InitBinary); err != nil {
		return nil, fmt.Errorf("rootfs image: %w", err)
	}
	img, err := imageComponent(ctx, tmpRoot)
	if err != nil {
		return nil, fmt.Errorf("rootfs image: %w", err)
	}
	m.Components = assemble(treeComps, kernelComponent(kpkg, kver, filepath.Join(kdir, KernelFile), initrd), img)
	if m.ID, err = ContentID(filepath.Join(kdir, KernelFile), initrd, tmpRoot); err != nil {
		return nil, err
	}

	// Install: the manifest goes first (a daemon reading the directory meanwhile
	// sees no image rather than a mix), then the files, then the new manifest,
	// which marks the image complete.
	if err := os.Remove(filepath.Join(opts.OutDir, ManifestFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if err := copyFile(filepath.Join(kdir, KernelFile), filepath.Join(opts.OutDir, KernelFile)); err != nil {
		return nil, err
	}
	if err := copyFile(initrd, filepath.Join(opts.OutDir, InitrdFile)); err != nil {
		return nil, err
	}
	if err := os.Rename(tmpRoot, filepath.Join(opts.OutDir, RootfsFile)); err != nil {
		return nil, err
	}
	m.Built = time.Now().UTC()
	if err := writeJSON(filepath.Join(opts.OutDir, ManifestFile), m); err != nil {
		return nil, err
	}
	b.stage("done in %s: %s", time.Since(b.start).Round(100*time.Millisecond), opts.OutDir)
	return m, nil
}

func (o *Options) setDefaults() {
	if o.Variant == "" {
		o.Variant = images.DefaultVariant
	}
	if o.OutDir == "" {
		o.OutDir = DefaultOutDir
	}
	if o.CacheDir == "" {
		o.CacheDir = DefaultCacheDir
	}
	if o.Mirror == "" {
		o.Mirror = DefaultMirror
	}
	if o.InitBinary == "" {
		o.InitBinary, _ = os.Executable()
	}
}

type builder struct {
	opts     Options
	packages []string
	start    time.Time
}

func (b *builder) stage(format string, args ...any) {
	if b.opts.Progress != nil {
		fmt.Fprintf(b.opts.Progress, "==> [%5.1fs] %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, args...))
	}
}

func (b *builder) complete() bool {
	for _, f := range []string{KernelFile, InitrdFile, RootfsFile} {
		if _, err := os.Stat(filepath.Join(b.opts.OutDir, f)); err != nil {
			return false
		}
	}
	return true
}

// ReadManifest reads image.json from an image directory.
func ReadManifest(dir string) (*Manifest, error) {
	data, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, ManifestFile), err)
	}
	return &m, nil
}

// ContentID is the id of the image made of these files: a hash of their hashes.
func ContentID(kernel, initrd, rootfs string) (string, error) {
	var sums []string
	for _, f := range []string{kernel, initrd, rootfs} {
		sum, err := fileHash(f)
		if err != nil {
			return "", err
		}
		sums = append(sums, sum)
	}
	return hashOf(sums...), nil
}

func hashOf(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:%s;", len(p), p)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func fileHash(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// copyFile copies through a temporary name, so dst is either old or new, never half.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(tmp)
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := out.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, dst)
}

// WriteManifest writes image.json into dir (through a temporary name).
func WriteManifest(dir string, m *Manifest) error {
	return writeJSON(filepath.Join(dir, ManifestFile), m)
}
