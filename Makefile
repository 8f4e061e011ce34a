# The two commands that matter: `make demo` and `make test`.
# Both install what they need (Debian packages, Go modules) themselves.

GO        ?= go
CLANG     ?= clang-19
STRIP     ?= llvm-strip-19
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
BIN       := bin/converter
# Fuzz targets, as package:target:budget. The budgets are execution
# counts (about 15 s each on the 2-core CI machine): Go 1.26's fuzzing
# coordinator can fail a duration budget with "context deadline exceeded"
# at its end when the workers are starved (go.dev/issue/75804, fixed in
# Go 1.27); a count has no deadline to race. FUZZTIME=30s (a duration or
# a count) replaces every budget.
FUZZ_TARGETS := ./tlv:FuzzParseRequest:400000x ./tlv:FuzzParseReply:400000x \
	./dissect:FuzzDecode:300000x ./capture:FuzzStreams:150000x \
	./internal/mptcpevents:FuzzDecode:200000x ./sockinfo:FuzzDecode:500000x \
	./nat:FuzzPool:2000x ./cookie:FuzzValid:800000x \
	./synhold:FuzzHeldFrame:200000x

# Debian packages the tests and the demo use at run time.
DEB_PACKAGES := iproute2 nftables tcpdump ethtool iperf3 haproxy chromium curl bird2

.PHONY: all build deps test check-fmt vet check-generate generate unit fuzz demo bench clean

all: build

# Without cgo: the daemon drops its capabilities on every thread at once
# (syscall.AllThreadsSyscall), which Go allows only in cgo-free programs.
build:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/converter

# deps installs missing Debian packages (only when a tool is absent, so a
# warm machine does not touch the network) and downloads Go modules.
deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	$(GO) mod download

test: deps check-fmt vet check-generate unit fuzz

# generate rebuilds the BPF objects with bpf2go (clang-19, llvm-strip-19,
# libbpf-dev); the output is committed so that go build needs no clang.
generate:
	@command -v $(CLANG) >/dev/null 2>&1 || { echo "installing clang-19 llvm-19 libbpf-dev"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang-19 llvm-19 libbpf-dev >/dev/null; }
	$(GO) generate ./bpf/

# check-generate: on a machine with clang-19 the committed BPF objects must
# be exactly what the sources build; elsewhere the committed ones are used.
check-generate:
	@if command -v $(CLANG) >/dev/null 2>&1 && command -v $(STRIP) >/dev/null 2>&1 && [ -f /usr/include/bpf/bpf_helpers.h ]; then \
		before=$$(sha256sum bpf/*_bpfel.go bpf/*_bpfel.o); \
		$(GO) generate ./bpf/ && [ "$$before" = "$$(sha256sum bpf/*_bpfel.go bpf/*_bpfel.o)" ] \
		|| { echo "bpf/: generated files differ from the sources: run make generate and commit"; exit 1; }; \
	else echo "check-generate: $(CLANG) not installed, building from the committed BPF objects"; fi

check-fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# unit runs every test, the namespace suite included (it needs root; with
# CI set, a missing capability fails instead of skipping).
unit:
	$(GO) test -race -count=1 -timeout 30m ./...
	$(GO) -C bench/chart vet ./...
	$(GO) -C bench/chart test -count=1 ./...

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; rest=$${t#*:}; name=$${rest%%:*}; budget=$${rest#*:}; \
		if [ -n "$(FUZZTIME)" ]; then budget=$(FUZZTIME); fi; \
		echo "fuzz $$pkg $$name for $$budget"; \
		$(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $$budget $$pkg; \
	done

# demo: a lab with real traffic through the converter over two subflows.
demo: deps build
	BIN=$(BIN) scripts/demo.sh

# bench: the side-by-side benchmark (direct route, HAProxy, converter), each
# path in each direction, 3 interleaved rounds; writes bench/results/latest.json
# and its chart bench/results/latest.svg (drawn by bench/chart, a module of
# its own). BENCH_FLAGS goes to bench/run.sh, e.g. a short try:
#   make bench BENCH_FLAGS="--rounds 1 --bytes 64M --duration 1s --idle-count 100 --out /tmp/bench"
bench: deps build
	BIN=$(BIN) bench/run.sh --no-build $(BENCH_FLAGS)

clean:
	rm -rf bin

# kernel-check: build a kernel with and without kernel/patches/*.patch (the
# MPTCP + TFO wnd_end fix), boot both under qemu (TCG) and run kernel/repro
# in each; fails if the patched kernel stalls. Not part of `make test`: it
# needs root and takes a long time. Overrides: KERNEL_SRC, WORKDIR, N, SIZE, RUNS, STALL.
.PHONY: kernel-check
kernel-check:
	KERNEL_SRC="$(KERNEL_SRC)" WORKDIR="$(WORKDIR)" N="$(N)" SIZE="$(SIZE)" RUNS="$(RUNS)" STALL="$(STALL)" GO="$(GO)" kernel/check.sh

# deb: the Debian package dist/converter_$(DEB_VERSION)_amd64.deb, for
# `apt install ./dist/converter_*.deb`: the binary (built as `make build`
# does), the systemd unit (UNIT), dist/converter.toml as a conffile, man
# pages and bash/zsh completions made by the hidden `converter docs`,
# README.md and LICENSE. Packed by nfpm (packaging/nfpm.yaml), run from the
# Go module proxy, so nothing is installed. Not part of `make test`.
NFPM      ?= $(GO) run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2
UNIT      ?= dist/converter.service
DEB_STAGE ?= bin/deb
# A Debian version starts with a digit and has no hyphen but before the
# Debian revision: v1.2.3-4-gabc1234-dirty -> 1.2.3+4+gabc1234+dirty, and a
# bare commit abc1234 -> 0~gitabc1234 (older than any release).
DEB_VERSION ?= $(shell echo '$(VERSION)' | sed -e 's/^v\([0-9]\)/\1/' -e 's/-/+/g' -e '/^[0-9]/!s/^/0~git/')
DEB       := dist/converter_$(DEB_VERSION)_amd64.deb

.PHONY: deb
deb: build
	@test -f "$(UNIT)" || { echo "deb: no systemd unit at $(UNIT) (set UNIT=FILE)"; exit 1; }
	rm -rf $(DEB_STAGE) && mkdir -p $(DEB_STAGE)/man
	cp $(BIN) $(DEB_STAGE)/converter
	$(BIN) docs --man-dir $(DEB_STAGE)/man
	gzip -9n $(DEB_STAGE)/man/*.1
	$(BIN) docs --bash > $(DEB_STAGE)/converter.bash
	$(BIN) docs --zsh > $(DEB_STAGE)/_converter
	rm -f dist/converter_*_amd64.deb
	DEB_VERSION='$(DEB_VERSION)' DEB_STAGE='$(DEB_STAGE)' UNIT='$(UNIT)' \
		$(NFPM) package --config packaging/nfpm.yaml --packager deb --target '$(DEB)'
	@echo "built $(DEB)"
