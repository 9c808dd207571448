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

.PHONY: all build run test test-go test-conformance gen gen-check vet bench bench-short bench-compare bench-compare-short fuzz swap-% clean

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

# Smoke modes for CI: every section runs a few calls; no figure is checked.
bench-short: build
	ENVD_BUNDLE=$(CURDIR)/$(BIN) $(GO) run ./test/bench -short

bench-compare-short: build
	ENVD_BUNDLE=$(CURDIR)/$(BIN) $(GO) run ./test/bench compare -short $(OTHER)

fuzz:
	bash scripts/fuzz.sh

clean:
	rm -rf $(BIN)
