package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// extractVmlinux finds the compressed payload inside a bzImage and returns the
// uncompressed ELF kernel, the format Firecracker loads on x86_64 (and QEMU's
// microvm boots through its PVH entry).
func extractVmlinux(ctx context.Context, bzImage []byte) ([]byte, error) {
	type format struct {
		name  string
		magic []byte
	}
	formats := []format{
		{"lz4", []byte{0x02, 0x21, 0x4c, 0x18}},
		{"gzip", []byte{0x1f, 0x8b, 0x08}},
	}
	for _, f := range formats {
		for off := 0; ; {
			i := bytes.Index(bzImage[off:], f.magic)
			if i < 0 {
				break
			}
			off += i
			out, _ := decompress(ctx, f.name, bzImage[off:])
			if validELF(out) {
				return out, nil
			}
			off++
		}
	}
	return nil, errors.New("no lz4 or gzip compressed ELF kernel found in the bzImage")
}

// decompress ignores the tools' exit status: the payload is followed by a size word
// that lz4 complains about although everything before it decoded. validELF decides.
func decompress(ctx context.Context, format string, data []byte) ([]byte, error) {
	switch format {
	case "gzip":
		r, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, err
		}
		r.Multistream(false)
		return io.ReadAll(r)
	case "lz4":
		var out bytes.Buffer
		cmd := exec.CommandContext(ctx, "lz4", "-dc")
		cmd.Stdin, cmd.Stdout = bytes.NewReader(data), &out
		err := cmd.Run()
		return out.Bytes(), err
	}
	return nil, fmt.Errorf("unknown compression %s", format)
}

func validELF(b []byte) bool {
	if len(b) < 64 || !bytes.HasPrefix(b, []byte("\x7fELF")) {
		return false
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return false
	}
	defer f.Close()
	return f.Machine == elf.EM_X86_64 && f.Type == elf.ET_EXEC
}

// moduleOrder returns the .ko files (relative to modDir) needed for the wanted
// modules, dependencies first, as insmod (which resolves nothing) needs them.
func moduleOrder(modDir string, wanted []string) ([]string, error) {
	index := map[string]string{} // module name -> relative path
	err := filepath.WalkDir(modDir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			rel, _ := filepath.Rel(modDir, p)
			index[normalize(strings.TrimSuffix(d.Name(), ".ko"))] = rel
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name, from string) error
	visit = func(name, from string) error {
		name = normalize(name)
		switch state[name] {
		case 1:
			return fmt.Errorf("module dependency cycle at %s", name)
		case 2:
			return nil
		}
		rel, ok := index[name]
		if !ok {
			return fmt.Errorf("kernel module %s (needed by %s) not found in %s", name, from, modDir)
		}
		state[name] = 1
		deps, err := moduleDepends(filepath.Join(modDir, rel))
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, rel)
		return nil
	}
	for _, w := range wanted {
		if err := visit(w, "the initrd"); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// normalize treats '-' and '_' in module names alike, as the kernel does.
func normalize(name string) string { return strings.ReplaceAll(name, "-", "_") }

// moduleDepends reads "depends=" from a module's .modinfo section.
func moduleDepends(ko string) ([]string, error) {
	f, err := elf.Open(ko)
	if err != nil {
		return nil, fmt.Errorf("read module %s: %w", ko, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s has no .modinfo", ko)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read module %s: %w", ko, err)
	}
	var deps []string
	for _, field := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(field, []byte("depends=")); ok && len(v) > 0 {
			deps = append(deps, strings.Split(string(v), ",")...)
		}
	}
	sort.Strings(deps)
	return deps, nil
}
