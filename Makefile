# fcm: build, guest image, tests, benchmarks. Tests and images need root.
GO        ?= go
BIN       := bin/fcm
VERSION   := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/fcmhost/fcm/internal/cli.Version=$(VERSION)
# The minimal image the end-to-end tests boot (cached: rebuilt in seconds when
# only fcm changed, fully only when its recipe did).
TEST_IMAGE ?= /var/cache/fcm/test-image
TEST_IMAGE_FULL ?= /var/cache/fcm/test-image-full
# The ACME CA the edge tests get certificates from (Pebble), cached by version.
PEBBLE_VERSION := v2.10.1
TOOLS := /var/cache/fcm/tools/pebble-$(PEBBLE_VERSION)
# Caddy 2.7 or later keeps streams open across config changes (stream_close_delay);
# distributions ship older ones (Debian 12: 2.6), so this one is built from source.
CADDY_VERSION := v2.11.9
CADDY := /var/cache/fcm/tools/caddy-$(CADDY_VERSION)/caddy
# zitadel/oidc's example OpenID provider (ID tokens without email: UserInfo has it).
OIDC_EXAMPLE_VERSION := v3.51.17
OIDC_EXAMPLE := /var/cache/fcm/tools/zitadel-oidc-$(OIDC_EXAMPLE_VERSION)/server
TOOL_ENV := FCM_PEBBLE=$(TOOLS)/pebble FCM_PEBBLE_CHALLTESTSRV=$(TOOLS)/pebble-challtestsrv FCM_CADDY=$(CADDY) FCM_OIDC_EXAMPLE=$(OIDC_EXAMPLE)

.PHONY: build web web-update release image test-image test-tools test fuzz bench vet deps caddy clean

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/fcm

# The client for the platforms the daemon serves downloads of: per platform
# fcm-<os>-<arch>.tar.gz holding the one file fcm, plus SHA256SUMS. The daemon
# serves them from --releases-dir (default <data-dir>/releases): e.g.
# sudo make release RELEASES=/var/lib/firecracker/releases. Each file is
# replaced whole (written beside, then renamed), so a daemon serving them
# never sends half of one.
RELEASES ?= bin/releases
PLATFORMS := linux/amd64 linux/arm64 darwin/amd64 darwin/arm64
release:
	@set -e; mkdir -p $(RELEASES); tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; names=; \
	for p in $(PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; name=fcm-$$os-$$arch.tar.gz; names="$$names $$name"; \
		echo "release $(RELEASES)/$$name"; \
		mkdir -p $$tmp/$$os-$$arch; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $$tmp/$$os-$$arch/fcm ./cmd/fcm; \
		chmod 0755 $$tmp/$$os-$$arch/fcm; \
		tar -C $$tmp/$$os-$$arch --owner=0 --group=0 --numeric-owner -czf $(RELEASES)/.$$name.new fcm; \
		mv -f $(RELEASES)/.$$name.new $(RELEASES)/$$name; \
	done; \
	cd $(RELEASES) && sha256sum $$names > .SHA256SUMS.new && mv -f .SHA256SUMS.new SHA256SUMS; \
	echo "release $(RELEASES)/SHA256SUMS ($(VERSION))"

# The web console's terminal (xterm.js, pinned by web/package-lock.json) is
# committed in web/xterm, so that `go install` alone gives a working console.
# `make web` checks it is what the lockfile pins (npm ci, then byte for byte);
# after changing package.json, `make web-update` copies the new files in.
XTERM_FILES := @xterm/xterm/lib/xterm.js @xterm/xterm/css/xterm.css @xterm/addon-fit/lib/addon-fit.js
web: web/node_modules/.package-lock.json
	@for f in $(XTERM_FILES); do \
		cmp -s web/node_modules/$$f web/xterm/$$(basename $$f) || \
		{ echo "web/xterm/$$(basename $$f) is not what web/package-lock.json pins ($$f): run make web-update"; exit 1; }; \
	done; echo "web/xterm matches web/package-lock.json"

web-update: web/node_modules/.package-lock.json
	for f in $(XTERM_FILES); do cp web/node_modules/$$f web/xterm/; done

web/node_modules/.package-lock.json: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --prefer-offline

# The product image (variant full) in /var/lib/firecracker.
image: build
	$(BIN) image build

test-image: build
	$(BIN) image build --variant minimal --out $(TEST_IMAGE)
	$(BIN) image build --variant full --out $(TEST_IMAGE_FULL)

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

# Upstream Caddy, built once per version into the cache.
$(CADDY):
	GOBIN=$(dir $(CADDY)) $(GO) install github.com/caddyserver/caddy/v2/cmd/caddy@$(CADDY_VERSION)

# Install it as /usr/local/bin/caddy (and make the distribution's caddy.service
# run it), unless the caddy on PATH is already 2.7 or later.
caddy: $(CADDY)
	./scripts/install-caddy.sh $(CADDY)

test-tools: $(CADDY)
	test -x $(TOOLS)/pebble -a -x $(TOOLS)/pebble-challtestsrv || GOBIN=$(TOOLS) $(GO) install \
		github.com/letsencrypt/pebble/v2/cmd/pebble@$(PEBBLE_VERSION) \
		github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv@$(PEBBLE_VERSION)
	test -x $(OIDC_EXAMPLE) || GOBIN=$(dir $(OIDC_EXAMPLE)) $(GO) install \
		github.com/zitadel/oidc/v3/example/server@$(OIDC_EXAMPLE_VERSION)

test: vet web test-image test-tools release
	mkdir -p bin/test-output
	FCM_BIN=$(abspath $(BIN)) FCM_TEST_IMAGE=$(TEST_IMAGE) FCM_TEST_IMAGE_FULL=$(TEST_IMAGE_FULL) $(TOOL_ENV) \
		FCM_RELEASES=$(abspath $(RELEASES)) FCM_TEST_OUTPUT=$(abspath bin/test-output) \
		$(GO) test -count=1 -timeout 40m ./...
	$(MAKE) fuzz

# A short run of every fuzz test past its committed seed corpus (testdata/fuzz);
# `go test` alone runs only the seeds. The budget is a count of executions, not
# a duration: Go 1.26's fuzz coordinator can fail a target with a bare "context
# deadline exceeded" when a duration runs out under load (go.dev/issue/75804).
# FUZZTIME=2000000x (or 5m, knowing that) for a longer search.
FUZZTIME ?= 30000x
FUZZ := ./internal/daemon:FuzzAPIBodies ./internal/names:FuzzValidate \
	./internal/console:FuzzParseControl ./internal/console:FuzzParseList ./internal/console:FuzzSessionName
fuzz:
	@set -e; for f in $(FUZZ); do \
		echo "fuzz $${f#*:} ($${f%%:*}, $(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$${f#*:}$$" -fuzztime $(FUZZTIME) "$${f%%:*}"; \
	done

# Every benchmark's table, the issue's targets among them (create overhead and
# host disk per VM on ext4 and XFS with the full image, parallel creates, list
# latency, fcm's share of boot); BENCH="-only targets" for one.
BENCH ?=
bench: test-image test-tools
	FCM_BIN=$(abspath $(BIN)) FCM_TEST_IMAGE=$(TEST_IMAGE) FCM_TEST_IMAGE_FULL=$(TEST_IMAGE_FULL) $(TOOL_ENV) $(GO) run ./bench $(BENCH)

# Host packages fcm and its tests use (Debian/Ubuntu).
deps:
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		qemu-system-x86 debootstrap debian-archive-keyring e2fsprogs xfsprogs lz4 \
		iproute2 nftables tmux procps ca-certificates git make gcc cpio caddy curl ruby \
		chromium prometheus
	command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm

clean:
	rm -rf bin web/node_modules
