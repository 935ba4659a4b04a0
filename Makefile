# fcm: build, guest image, tests, benchmarks. Tests and images need root.
GO        ?= go
BIN       := bin/fcm
VERSION   := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/fcmhost/fcm/internal/cli.Version=$(VERSION)
# The minimal image the end-to-end tests boot (cached: rebuilt in seconds when
# only fcm changed, fully only when its recipe did).
TEST_IMAGE ?= /var/cache/fcm/test-image
TEST_IMAGE_FULL ?= /var/cache/fcm/test-image-full

.PHONY: build image test-image test bench vet deps clean

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/fcm

# The product image (variant full) in /var/lib/firecracker.
image: build
	$(BIN) image build

test-image: build
	$(BIN) image build --variant minimal --out $(TEST_IMAGE)
	$(BIN) image build --variant full --out $(TEST_IMAGE_FULL)

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

test: vet test-image
	FCM_BIN=$(abspath $(BIN)) FCM_TEST_IMAGE=$(TEST_IMAGE) FCM_TEST_IMAGE_FULL=$(TEST_IMAGE_FULL) $(GO) test -count=1 -timeout 30m ./...

bench: test-image
	FCM_TEST_IMAGE=$(TEST_IMAGE) $(GO) run ./bench

# Host packages fcm and its tests use (Debian/Ubuntu).
deps:
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		qemu-system-x86 debootstrap debian-archive-keyring e2fsprogs xfsprogs lz4 \
		iproute2 nftables tmux procps ca-certificates git make gcc cpio

clean:
	rm -rf bin
