# envd: one executable under four names (envd-init, envd-proc, envd-fs,
# envd-net), so the process tree shares its pages.
GO        ?= go
VERSION   ?= 0.6.4
COMMIT    ?= $(shell git rev-parse --short=7 HEAD 2>/dev/null)
LDFLAGS   := -s -w -X github.com/envd-project/envd/envdinit/app.Version=$(VERSION) -X github.com/envd-project/envd/envdinit/app.Commit=$(COMMIT)
BIN       := bin
PORT      ?= 49983
RUNFLAGS  ?= --isnotfc
PLUGINS   := envd-proc envd-fs envd-net
# grpcnotrace: grpc without x/net/trace (and its html/template): smaller, faster to start.
TAGS      := grpcnotrace

.PHONY: all build run test test-go test-conformance gen vet bench bench-short bench-compare bench-compare-short bench-conformance fuzz fuzz-short stress swap-% clean rootfs install-rootfs vm-test

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -tags '$(TAGS)' -ldflags '$(LDFLAGS)' -o $(BIN)/envd-init ./cmd/envd-init
	@for p in $(PLUGINS); do ln -f $(BIN)/envd-init $(BIN)/$$p; done

# Build one plugin on its own and swap it into bin/ (the others keep sharing pages).
swap-%:
	CGO_ENABLED=0 $(GO) build -trimpath -tags '$(TAGS)' -ldflags '$(LDFLAGS)' -o $(BIN)/$*.new ./cmd/$*
	mv -f $(BIN)/$*.new $(BIN)/$*

run: build
	$(BIN)/envd-init --port $(PORT) $(RUNFLAGS)

gen:
	$(GO) tool buf generate

vet:
	$(GO) vet ./...

test: build vet test-go test-conformance

test-go:
	# -count=1: the tests drive real processes and a built bundle, which the
	# test cache cannot see change.
	ENVD_BUNDLE=$(CURDIR)/$(BIN) $(GO) test -race -count=1 -timeout 8m ./...

# The SDK against both flavors (their /health and env var names differ).
test-conformance: build
	ENVD_FLAVOR=e2b bash conformance/run.sh
	ENVD_FLAVOR=wrenn bash conformance/run.sh

bench: build
	ENVD_BUNDLE=$(CURDIR)/$(BIN) $(GO) run ./test/bench

# The same op mix side by side against another envd binary (an older build
# of ours, E2B's envd; OTHER=standalone: our plugins without envd-init), in
# alternating rounds: p50, CPU per call, memory, ratios.
bench-compare: build
	ENVD_BUNDLE=$(CURDIR)/$(BIN) $(GO) run ./test/bench compare $(OTHER)

# The tree's PSS while the JS SDK conformance suite runs RUNS times against
# one tree: idle, peak and 10 s after each run (as root). The SDK talks to
# port 49983, so this runs in a network namespace of its own (unshare: it
# goes away with the command).
RUNS ?= 2
bench-conformance: build
	unshare --net sh -c 'ip link set lo up && ENVD_BUNDLE=$(CURDIR)/$(BIN) $(GO) run ./test/bench conformance $(RUNS)'

# Smoke modes for CI: every section runs a few calls; no figure is checked.
bench-short: build
	ENVD_BUNDLE=$(CURDIR)/$(BIN) $(GO) run ./test/bench -short

bench-compare-short: build
	ENVD_BUNDLE=$(CURDIR)/$(BIN) $(GO) run ./test/bench compare -short $(OTHER)

fuzz:
	bash scripts/fuzz.sh

# Every fuzz target for 3000 inputs each (CI-sized; see scripts/fuzz.sh). A
# count, not a duration: a duration that ends while a worker is busy with
# slow file I/O makes go test fail with "context deadline exceeded".
fuzz-short:
	FUZZTIME=$(or $(FUZZTIME),3000x) bash scripts/fuzz.sh

# The stress and fault suite for STRESS_DURATION of load (test/stress; its
# short mode runs in make test).
STRESS_DURATION ?= 2m
stress: build
	ENVD_BUNDLE=$(CURDIR)/$(BIN) STRESS_DURATION=$(STRESS_DURATION) $(GO) test -count=1 -v -timeout 60m -run '^TestStress$$' ./test/stress

# A VM root filesystem image holding the bundle (rootfs/README.md); no root
# needed. MODULES=/lib/modules/<release> adds the virtio modules.
ROOTFS ?= out/rootfs.ext4
rootfs: build
	MODULES=$(MODULES) bash rootfs/build.sh $(ROOTFS)

# Install the bundle into an existing root filesystem tree: make install-rootfs DEST=dir
install-rootfs: build
	bash rootfs/install.sh $(DEST)

# Boot the bundle as PID 1 of a QEMU microvm and drive it with the SDK
# (test/vm/run.sh; VM_KVM=1 to use KVM).
vm-test: build
	bash test/vm/run.sh

clean:
	rm -rf $(BIN) out
