package buildpack

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/fcmhost/fcm/internal/release"
)

var timeNow = time.Now

// version runs `name args` and returns its first line of output.
func version(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

// detectJS says which JavaScript tool installs the app's packages: bun when it
// has a bun lockfile, npm for any other package.json, "" for neither.
func (b *Builder) detectJS() (string, error) {
	var bunLock, npmLock string
	for _, n := range []string{"bun.lock", "bun.lockb"} {
		if b.has(n) {
			bunLock = n
		}
	}
	if b.has("package-lock.json") {
		npmLock = "package-lock.json"
	}
	switch {
	case bunLock != "" && npmLock != "":
		return "", failf("Two different lockfiles found: %s and %s. Keep the one of the tool you use and delete the other", bunLock, npmLock)
	case bunLock != "":
		return "bun", nil
	case b.has("package.json"):
		return "npm", nil
	}
	return "", nil
}

// linkNodeModules points the build's node_modules at the installed packages.
func (b *Builder) linkNodeModules(deps string) error {
	nm := filepath.Join(b.Dir, "node_modules")
	os.RemoveAll(nm)
	if err := os.Symlink(filepath.Join(deps, "node_modules"), nm); err != nil {
		return err
	}
	b.res.PathAdd = append(b.res.PathAdd, filepath.Join(b.Dir, "node_modules", ".bin"))
	return nil
}

func (b *Builder) npm(ctx context.Context) error {
	node := version("node", "--version")
	files := "package.json"
	lock := b.read("package-lock.json")
	if lock != nil {
		files += ", package-lock.json"
	}
	b.step("Detected Node.js (%s)", files)
	b.note("node %s, npm %s", node, version("npm", "--version"))
	b.res.Runtimes = append(b.res.Runtimes, "Node.js "+node)
	deps, cached, err := b.depsDir("node", []byte(node), b.read("package.json"), lock, b.read(".npmrc"))
	if err != nil {
		return err
	}
	if cached {
		b.step("Using cached node_modules (package.json and lockfile unchanged)")
	} else {
		if err := b.copyInto(deps, "package.json", "package-lock.json", ".npmrc"); err != nil {
			return err
		}
		env := b.env("npm_config_cache="+b.cacheDir("npm"), "npm_config_update_notifier=false", "npm_config_fund=false", "npm_config_audit=false")
		if lock != nil {
			b.step("Installing dependencies with npm ci")
			err = b.run(ctx, deps, env, "npm", "ci")
		} else {
			b.step("Installing dependencies with npm install (no package-lock.json)")
			err = b.run(ctx, deps, env, "npm", "install")
		}
		if err != nil {
			return failf("npm could not install the dependencies: %v", err)
		}
		if err := markComplete(deps); err != nil {
			return err
		}
	}
	if err := b.linkNodeModules(deps); err != nil {
		return err
	}
	if b.packageScript("build") {
		b.step("Running the build script (npm run build)")
		if err := b.run(ctx, b.Dir, b.env("PATH="+filepath.Join(b.Dir, "node_modules/.bin")+":/usr/local/bin:/usr/bin:/bin"), "npm", "run", "build"); err != nil {
			return failf("the build script failed: %v", err)
		}
	}
	return nil
}

func (b *Builder) bun(ctx context.Context) error {
	bunVer := version("bun", "--version")
	lockName := "bun.lock"
	if !b.has(lockName) {
		lockName = "bun.lockb"
	}
	b.step("Detected Bun (package.json, %s)", lockName)
	b.note("bun %s", bunVer)
	b.res.Runtimes = append(b.res.Runtimes, "Bun "+bunVer)
	deps, cached, err := b.depsDir("bun", []byte(bunVer), b.read("package.json"), b.read(lockName), b.read("bunfig.toml"), b.read(".npmrc"))
	if err != nil {
		return err
	}
	if cached {
		b.step("Using cached node_modules (package.json and %s unchanged)", lockName)
	} else {
		if err := b.copyInto(deps, "package.json", lockName, "bunfig.toml", ".npmrc"); err != nil {
			return err
		}
		b.step("Installing dependencies with bun install --frozen-lockfile")
		env := b.env("BUN_INSTALL_CACHE_DIR="+b.cacheDir("bun"), "DO_NOT_TRACK=1")
		if err := b.run(ctx, deps, env, "bun", "install", "--frozen-lockfile"); err != nil {
			return failf("bun could not install the dependencies: %v", err)
		}
		if err := markComplete(deps); err != nil {
			return err
		}
	}
	if err := b.linkNodeModules(deps); err != nil {
		return err
	}
	if b.packageScript("build") {
		b.step("Running the build script (bun run build)")
		if err := b.run(ctx, b.Dir, b.env("PATH="+filepath.Join(b.Dir, "node_modules/.bin")+":/usr/local/bin:/usr/bin:/bin"), "bun", "run", "build"); err != nil {
			return failf("the build script failed: %v", err)
		}
	}
	return nil
}

var pyVersionRE = regexp.MustCompile(`^(?:python-)?(3\.\d+)(?:\.\d+)?$`)

// pickPython returns the interpreter the app asks for (runtime.txt, then
// .python-version), or the image's python3, and why.
func (b *Builder) pickPython() (string, string, error) {
	for _, f := range []string{"runtime.txt", ".python-version"} {
		want := strings.TrimSpace(string(b.read(f)))
		if want == "" {
			continue
		}
		m := pyVersionRE.FindStringSubmatch(want)
		if m == nil {
			return "", "", failf("%s says %q: write a Python version such as 3.14", f, want)
		}
		bin := "/usr/bin/python" + m[1]
		if _, err := os.Stat(bin); err != nil {
			return "", "", failf("%s asks for Python %s, which this VM's image does not have (it has %s)", f, m[1], strings.Join(installedPythons(), ", "))
		}
		return bin, "from " + f, nil
	}
	return "/usr/bin/python3", "the image's default; choose another with .python-version", nil
}

func installedPythons() []string {
	matches, _ := filepath.Glob("/usr/bin/python3.*")
	var out []string
	for _, m := range matches {
		v := strings.TrimPrefix(filepath.Base(m), "python")
		if regexp.MustCompile(`^3\.\d+$`).MatchString(v) {
			out = append(out, v)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(out)))
	return out
}

func (b *Builder) python(ctx context.Context) error {
	py, why, err := b.pickPython()
	if err != nil {
		return err
	}
	ver := strings.TrimPrefix(version(py, "--version"), "Python ")
	reqs := b.read("requirements.txt")
	manifest := "requirements.txt"
	key := [][]byte{[]byte(py), []byte(ver), reqs}
	if reqs == nil {
		manifest = "pyproject.toml"
		// The app installs itself: nothing to share between builds.
		key = append(key, b.read("pyproject.toml"), []byte(b.Dir))
	}
	b.step("Detected Python (%s)", manifest)
	b.step("Using Python %s (%s)", ver, why)
	b.res.Runtimes = append(b.res.Runtimes, "Python "+ver)
	deps, cached, err := b.depsDir("python", key...)
	if err != nil {
		return err
	}
	venv := filepath.Join(deps, "venv")
	if cached {
		b.step("Using cached virtualenv (%s unchanged)", manifest)
	} else {
		b.step("Installing dependencies with pip (%s)", manifest)
		env := b.env("PIP_CACHE_DIR="+b.cacheDir("pip"), "PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_NO_INPUT=1")
		if err := b.run(ctx, deps, env, py, "-m", "venv", venv); err != nil {
			return failf("could not make a virtualenv: %v", err)
		}
		args := []string{"install", "-r", filepath.Join(b.Dir, "requirements.txt")}
		if reqs == nil {
			args = []string{"install", b.Dir}
		}
		if err := b.run(ctx, b.Dir, env, filepath.Join(venv, "bin", "pip"), args...); err != nil {
			return failf("pip could not install the dependencies: %v", err)
		}
		if err := markComplete(deps); err != nil {
			return err
		}
	}
	b.res.PathAdd = append(b.res.PathAdd, filepath.Join(venv, "bin"))
	b.res.Env["VIRTUAL_ENV"] = venv
	return nil
}

func (b *Builder) ruby(ctx context.Context) error {
	rv := version("ruby", "--version")
	b.step("Detected Ruby (Gemfile%s)", map[bool]string{true: ", Gemfile.lock"}[b.has("Gemfile.lock")])
	b.note("%s, bundler %s", rv, version("bundle", "--version"))
	b.res.Runtimes = append(b.res.Runtimes, rv)
	deps, cached, err := b.depsDir("ruby", []byte(rv), b.read("Gemfile"), b.read("Gemfile.lock"))
	if err != nil {
		return err
	}
	bundleEnv := []string{"BUNDLE_PATH=" + deps, "BUNDLE_WITHOUT=development:test", "BUNDLE_GEMFILE=" + filepath.Join(b.Dir, "Gemfile")}
	for _, kv := range bundleEnv {
		k, v, _ := strings.Cut(kv, "=")
		b.res.Env[k] = v
	}
	lockCopy := filepath.Join(deps, "Gemfile.lock")
	if cached {
		b.step("Using cached gems (Gemfile and Gemfile.lock unchanged)")
		if !b.has("Gemfile.lock") {
			if data, err := os.ReadFile(lockCopy); err == nil {
				os.WriteFile(filepath.Join(b.Dir, "Gemfile.lock"), data, 0o644)
			}
		}
		return nil
	}
	b.step("Installing dependencies with bundle install")
	env := b.env(append(bundleEnv, "BUNDLE_USER_CACHE="+b.cacheDir("bundler"))...)
	if err := b.run(ctx, b.Dir, env, "bundle", "install", "--jobs", "4"); err != nil {
		return failf("bundle install failed: %v", err)
	}
	if data, err := os.ReadFile(filepath.Join(b.Dir, "Gemfile.lock")); err == nil {
		os.WriteFile(lockCopy, data, 0o644)
	}
	return markComplete(deps)
}

// chownTree gives the app user the tree (extracted as root).
func chownTree(dir string) error {
	return filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, release.UID, release.GID)
	})
}
