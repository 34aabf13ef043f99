# The README's commands. `make test` is what CI (.ci/run) runs.

GO          ?= go
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
COMMIT      ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
# The build date is the commit's, so that building the same commit twice
# gives the same binary.
DATE        ?= $(shell TZ=UTC git log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ 2>/dev/null || echo unknown)
VERSION_PKG := github.com/pj-proxy/pj/internal/version
LDFLAGS     := -s -w -X $(VERSION_PKG).Version=$(VERSION) -X $(VERSION_PKG).Commit=$(COMMIT) -X $(VERSION_PKG).Date=$(DATE)
BIN         := bin/pj
# The mapping `make run` serves: SSH on port 8787 of this machine.
MAPPING     ?= 127.0.0.1:8787:127.0.0.1:22
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
GORELEASER  := github.com/goreleaser/goreleaser/v2@v2.15.1
FUZZTIME    ?= 60s
FUZZFLAGS   ?=

IMAGE       ?= pj:latest
# docker, podman or buildah; empty: the first that works here.
ENGINE      ?=
TEST_ENGINE := $(or $(ENGINE),buildah)
PLATFORMS   ?= linux/$(shell $(GO) env GOARCH)

.PHONY: build run test vet lint funclen upgrade-soak fmt-check race cross fuzz fuzz-long fuzz-short bench soak clean image image-multiarch image-test release-snapshot release-check

## build: a static binary in bin/pj, version stamped from git
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/pj

## run: build, then proxy $(MAPPING) until Ctrl-C
run: build
	./$(BIN) --proxy $(MAPPING)

## test: formatting, vet, staticcheck, function length, the cross builds, every test with
## the race detector and a few seconds of each fuzz target
test: fmt-check vet lint funclen cross race fuzz-short

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

lint:
	$(GO) run $(STATICCHECK) ./...

# funclen: no function under internal/ longer than 80 lines (tests aside)
funclen:
	$(GO) run ./scripts/funclen -max 80 internal

race:
	$(GO) test -race -count=1 -timeout 15m ./...

# The Linux architectures pj is built for; arm is ARMv7 (GOARM=7).
CROSS_ARCHS ?= amd64 arm64 arm riscv64 ppc64le s390x loong64 386

## cross: build cmd/pj for every Linux architecture in CROSS_ARCHS, and check that
## a build for another system stops with one clear message
cross:
	@set -e; for arch in $(CROSS_ARCHS); do \
		echo "build ./cmd/pj for linux/$$arch"; \
		GOOS=linux GOARCH=$$arch GOARM=7 CGO_ENABLED=0 $(GO) build -o /dev/null ./cmd/pj; \
	done
	@out=$$(GOOS=darwin GOARCH=arm64 CGO_ENABLED=0 $(GO) build -o /dev/null ./cmd/pj 2>&1); \
	if ! echo "$$out" | grep -q pj_runs_on_Linux_only; then \
		echo "a darwin build must stop with pj_runs_on_Linux_only; got:"; echo "$$out"; exit 1; fi; \
	echo "build ./cmd/pj for darwin/arm64: stops as it should (pj runs on Linux only)"

## fuzz: every Fuzz target of the repository, $(FUZZTIME) each (scripts/fuzz.sh finds them)
fuzz:
	FUZZTIME=$(FUZZTIME) FUZZFLAGS="$(FUZZFLAGS)" GO=$(GO) bash scripts/fuzz.sh

## fuzz-long: every Fuzz target for 10 minutes (docs/RELIABILITY.md has the last run)
fuzz-long:
	FUZZTIME=10m FUZZFLAGS="$(FUZZFLAGS)" GO=$(GO) bash scripts/fuzz.sh

# fuzz-short: a few seconds of each target, part of make test
fuzz-short:
	FUZZTIME=5s FUZZFLAGS="$(FUZZFLAGS)" GO=$(GO) bash scripts/fuzz.sh

## image: the container image $(IMAGE) for $(PLATFORMS), with $(ENGINE) or else the first of docker, podman, buildah that works (deploy/image.sh)
image:
	ENGINE=$(ENGINE) IMAGE=$(IMAGE) PLATFORMS="$(PLATFORMS)" VERSION=$(VERSION) COMMIT=$(COMMIT) DATE=$(DATE) bash deploy/image.sh

## image-multiarch: $(IMAGE) as a manifest list for linux/amd64 and linux/arm64
image-multiarch:
	$(MAKE) image PLATFORMS="linux/amd64 linux/arm64"

## image-test: build the image (with buildah unless ENGINE says otherwise), then run pj -V and a proxied round trip inside it
image-test:
	$(MAKE) image ENGINE=$(TEST_ENGINE)
	ENGINE=$(TEST_ENGINE) PJ_IMAGE=$(IMAGE) PJ_IMAGE_VERSION=$(VERSION) PJ_IMAGE_PLATFORMS="$(PLATFORMS)" \
		$(GO) test -count=1 -v -run '^TestImage' ./deploy/container

## release-snapshot: release archives, checksums and .deb/.rpm packages in dist/, from the work tree (GoReleaser)
release-snapshot:
	PJ_COMMIT=$(COMMIT) PJ_SHORT_COMMIT=$(shell git rev-parse --short=12 HEAD 2>/dev/null) PJ_DATE=$(DATE) \
		$(GO) run $(GORELEASER) release --snapshot --clean

## release-check: validate .goreleaser.yaml against GoReleaser's own configuration types
release-check:
	cd deploy/release && $(GO) test -count=1 ./...

## soak: the soak suite at full scale, the real binary under load (about 5 min; see soak/README.md)
soak:
	SOAK=full $(GO) test ./soak -run '^TestSoak$$' -count=1 -v -timeout 60m

## upgrade-soak: 1000 established connections moved by two upgrades in a row, keep echoing; prints the pause each saw
upgrade-soak:
	PJ_UPGRADE_CONNS=1000 $(GO) test ./cmd/pj -run '^TestUpgradeMovesEstablishedConnections$$' -count=1 -v -timeout 10m

## bench: pj side by side with HAProxy, nginx and socat (about 7 min; see bench/README.md)
bench:
	bash bench/run.sh

clean:
	rm -rf bin
