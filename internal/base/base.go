// Package base keeps the guest images VMs boot from, each stored once under its
// content id in <data-dir>/images/<id>/ (kernel, initrd, root filesystem,
// image.json) and never changed after: every VM made from a base attaches its
// root filesystem read-only, with a disk of its own on top. The current base is
// the image a source directory (what `fcm image build` writes) holds now; it is
// imported (hard-linked, or copied once across filesystems) the first time a
// create sees it, so new VMs use a new build while existing ones keep theirs.
package base

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/fcmhost/fcm/internal/disk"
	"github.com/fcmhost/fcm/internal/image"
)

// Base is one stored image.
type Base struct {
	ID       string
	Dir      string
	Manifest *image.Manifest
}

// Kernel, Initrd and Rootfs are the base's files.
func (b *Base) Kernel() string { return filepath.Join(b.Dir, image.KernelFile) }
func (b *Base) Initrd() string { return filepath.Join(b.Dir, image.InitrdFile) }
func (b *Base) Rootfs() string { return filepath.Join(b.Dir, image.RootfsFile) }

// Source names the files of the image new VMs are made from; the manifest
// (image.json) is looked for beside Rootfs.
type Source struct {
	Kernel, Initrd, Rootfs string
}

func (s Source) manifestPath() string {
	return filepath.Join(filepath.Dir(s.Rootfs), image.ManifestFile)
}

// Store is the images directory of one data dir.
type Store struct {
	dir string
	src Source

	mu      sync.Mutex
	current *Base
	seen    fileKey // of the source's manifest when current was imported
}

type fileKey struct {
	dev, ino uint64
	size     int64
	mtime    int64
}

func keyOf(path string) (fileKey, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return fileKey{}, err
	}
	return fileKey{uint64(st.Dev), st.Ino, st.Size, st.Mtim.Nano()}, nil
}

var idPattern = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Open returns the store in dataDir/images, with src as the current image.
func Open(dataDir string, src Source) (*Store, error) {
	dir := filepath.Join(dataDir, "images")
	// Hypervisors run as per-VM users: they must reach a base's files (0644)
	// through searchable directories.
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, err
	}
	return &Store{dir: dir, src: src}, nil
}

// Dir is the images directory.
func (s *Store) Dir() string { return s.dir }

// ErrNotFound says there is no base of that id.
var ErrNotFound = errors.New("no such image")

// Get returns the stored base id.
func (s *Store) Get(id string) (*Base, error) {
	if !idPattern.MatchString(id) {
		return nil, fmt.Errorf("image %q: %w", id, ErrNotFound)
	}
	dir := filepath.Join(s.dir, id)
	m, err := image.ReadManifest(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("image %s: %w", short(id), ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	return &Base{ID: id, Dir: dir, Manifest: m}, nil
}

// Exists reports whether base id is stored (a stat: cheap inside a store
// transaction).
func (s *Store) Exists(id string) bool {
	_, err := os.Stat(filepath.Join(s.dir, id, image.ManifestFile))
	return err == nil
}

// Current returns the base new VMs are made from: the source's image, imported
// when it changed since the last call. While a build replaces the source's
// files (its manifest is gone meanwhile) the last current base stays current.
func (s *Store) Current(ctx context.Context) (*Base, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key, err := keyOf(s.src.manifestPath())
	if err != nil {
		if s.current != nil && errors.Is(err, fs.ErrNotExist) {
			return s.current, nil
		}
		return nil, s.missing(err)
	}
	if s.current != nil && key == s.seen && s.Exists(s.current.ID) {
		return s.current, nil
	}
	b, err := s.importSource(ctx)
	if err != nil {
		if s.current != nil && errors.Is(err, errChanging) {
			return s.current, nil
		}
		return nil, err
	}
	s.current, s.seen = b, key
	return b, nil
}

// CurrentID is the id of the last base Current returned ("" before any).
func (s *Store) CurrentID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.current == nil {
		return ""
	}
	return s.current.ID
}

func (s *Store) missing(err error) error {
	for _, f := range []string{s.src.Kernel, s.src.Initrd, s.src.Rootfs, s.src.manifestPath()} {
		if _, serr := os.Stat(f); serr != nil {
			return fmt.Errorf("guest image: %s is missing: build it with 'sudo fcm image build --out %s'", f, filepath.Dir(f))
		}
	}
	return fmt.Errorf("guest image: %w", err)
}

var errChanging = errors.New("the guest image changed while it was being read (a build is replacing it?)")

// importSource stores the source's files under their content id: hard links
// when they are on the images directory's filesystem (a build replaces files
// by renaming new ones over them, so a link keeps the old content), else
// copies. The manifest is read before and after: if it changed, the files may
// be a mix, and the import is dropped.
func (s *Store) importSource(ctx context.Context) (*Base, error) {
	before, err := image.ReadManifest(filepath.Dir(s.src.Rootfs))
	if err != nil {
		return nil, s.missing(err)
	}
	id := before.ID
	if id != "" {
		if b, err := s.Get(id); err == nil {
			return b, nil
		}
	}
	tmp := filepath.Join(s.dir, ".import-"+randHex())
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	for _, f := range []struct{ src, name string }{
		{s.src.Kernel, image.KernelFile}, {s.src.Initrd, image.InitrdFile}, {s.src.Rootfs, image.RootfsFile},
	} {
		if err := linkOrCopy(ctx, f.src, filepath.Join(tmp, f.name)); err != nil {
			return nil, fmt.Errorf("guest image: %w", err)
		}
	}
	after, err := image.ReadManifest(filepath.Dir(s.src.Rootfs))
	if err != nil || after.ID != before.ID || !after.Built.Equal(before.Built) {
		return nil, errChanging
	}
	if id == "" {
		// An image built before images had ids: hash it once.
		if id, err = image.ContentID(filepath.Join(tmp, image.KernelFile), filepath.Join(tmp, image.InitrdFile), filepath.Join(tmp, image.RootfsFile)); err != nil {
			return nil, err
		}
		before.ID = id
		if b, err := s.Get(id); err == nil {
			return b, nil
		}
	}
	if err := image.WriteManifest(tmp, before); err != nil {
		return nil, err
	}
	final := filepath.Join(s.dir, id)
	if err := os.Rename(tmp, final); err != nil {
		if b, gerr := s.Get(id); gerr == nil {
			return b, nil // imported meanwhile by someone else
		}
		return nil, err
	}
	syncDir(s.dir)
	return &Base{ID: id, Dir: final, Manifest: before}, nil
}

func linkOrCopy(ctx context.Context, src, dst string) error {
	err := os.Link(src, dst)
	if err == nil {
		return nil
	}
	if !errors.Is(err, syscall.EXDEV) && !errors.Is(err, syscall.EPERM) {
		return err
	}
	if _, err := disk.Clone(ctx, src, dst); err != nil {
		return err
	}
	return os.Chmod(dst, 0o644)
}

// Info describes a stored base for `fcm image ls`.
type Info struct {
	Base
	Bytes int64 // host disk its files take
}

// List returns the stored bases, newest build first.
func (s *Store) List() ([]Info, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, err
	}
	var out []Info
	for _, e := range entries {
		if !e.IsDir() || !idPattern.MatchString(e.Name()) {
			continue
		}
		b, err := s.Get(e.Name())
		if err != nil {
			continue // half removed, or not a base
		}
		var n int64
		for _, f := range []string{b.Kernel(), b.Initrd(), b.Rootfs()} {
			if a, err := disk.Allocated(f); err == nil {
				n += a
			}
		}
		out = append(out, Info{Base: *b, Bytes: n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Manifest.Built.After(out[j].Manifest.Built) })
	return out, nil
}

// Retire takes base id out of the store at once (a rename, so a create that
// looks for it afterwards does not find it) and returns the directory to
// delete with Delete once the caller's decision is durable. The current base
// is never retired.
func (s *Store) Retire(id string) (string, error) {
	if !idPattern.MatchString(id) {
		return "", fmt.Errorf("image %q: %w", id, ErrNotFound)
	}
	if id == s.CurrentID() {
		return "", fmt.Errorf("image %s is the current image", short(id))
	}
	gone := filepath.Join(s.dir, ".prune-"+id)
	if err := os.Rename(filepath.Join(s.dir, id), gone); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("image %s: %w", short(id), ErrNotFound)
		}
		return "", err
	}
	return gone, nil
}

// Delete removes a retired base's directory.
func Delete(dir string) error { return os.RemoveAll(dir) }

// Clean removes what an interrupted import or prune left behind.
func (s *Store) Clean() error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".import-") || strings.HasPrefix(e.Name(), ".prune-") {
			errs = append(errs, os.RemoveAll(filepath.Join(s.dir, e.Name())))
		}
	}
	return errors.Join(errs...)
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Short is the first 12 hex digits of a base id, as `fcm image ls` shows it.
func Short(id string) string { return short(id) }

func randHex() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func syncDir(dir string) {
	if f, err := os.Open(dir); err == nil {
		f.Sync()
		f.Close()
	}
}
