# forkd: build, run the demo, test, lint, benchmark.
GO      ?= go
BIN     := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/forkd/forkd/internal/version.Version=$(VERSION)
# Fuzz targets run briefly in `make test`, for a number of executions rather than a duration: with
# a duration, Go 1.26's fuzz coordinator can fail a target with a bare "context deadline exceeded"
# as the time runs out (golang/go#75804, fixed in Go 1.27). Longer: `make fuzz FUZZTIME=5m`.
FUZZTIME ?=
STATICCHECK ?= $(shell command -v staticcheck 2>/dev/null || echo $(shell $(GO) env GOPATH)/bin/staticcheck)

.PHONY: all build run run-go python-gunicorn test unit fuzz lint bench chaos clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/forkd ./cmd/forkd
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/forkctl ./cmd/forkctl
	$(GO) build -o $(BIN)/hello ./examples/hello

# The Python workers run on Debian's interpreter, which has gunicorn (python3-gunicorn); the python3
# first on PATH may be another (pyenv, a venv) that does not.
PYTHON  ?= /usr/bin/python3

# Serve the Python demo on 127.0.0.1:8080 with 4 workers in fork-worker mode, on gunicorn's threaded
# worker (forkd.gunicorn). Try:
#   curl 127.0.0.1:8080; bin/forkctl --config examples/python/forkd.hcl status
run: build python-gunicorn
	$(BIN)/forkd --config examples/python/forkd.hcl

# gunicorn for $(PYTHON): installed with apt-get (Debian 12's python3-gunicorn) when it is missing.
python-gunicorn:
	@if ! $(PYTHON) -c 'import gunicorn' 2>/dev/null; then \
	  echo "$(PYTHON) has no gunicorn: installing python3-gunicorn (apt-get install -y python3-gunicorn)"; \
	  { apt-get install -y -qq python3-gunicorn >/dev/null 2>&1 || \
	    { apt-get update -qq && apt-get install -y -qq python3-gunicorn >/dev/null; }; } || \
	  { echo "could not install it: as root, apt-get install python3-gunicorn (or pip install gunicorn for $(PYTHON))"; exit 1; }; \
	fi

# The Go demo on 127.0.0.1:8081 (exec mode: Go cannot fork), so it can run beside make run. Try:
#   curl 127.0.0.1:8081; bin/forkctl --config examples/hello/forkd.hcl status
run-go: build
	$(BIN)/forkd --config examples/hello/forkd.hcl

test: lint unit fuzz

unit:
	$(GO) test -race -count=1 -timeout 20m ./...
	# The executor's simulation: 10,000 seeded histories without -race (300 run under it above).
	$(GO) test -count=1 -run '^TestExecutorSimulation$$' ./internal/supervisor
	$(PYTHON) -m unittest discover -s sdk/python/tests -t sdk/python

fuzz:
	$(GO) test -run='^$$' -fuzz=FuzzParse -fuzztime=$(or $(FUZZTIME),20000x) ./pkg/config
	$(GO) test -run='^$$' -fuzz=FuzzParse -fuzztime=$(or $(FUZZTIME),100000x) ./pkg/notify
	$(GO) test -run='^$$' -fuzz=FuzzDecode -fuzztime=$(or $(FUZZTIME),200000x) ./pkg/protocol

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	@if [ -x "$(STATICCHECK)" ]; then $(STATICCHECK) ./...; \
	  else echo "staticcheck not installed (go install honnef.co/go/tools/cmd/staticcheck@latest); skipped"; fi

bench:
	$(GO) test -run='^$$' -bench=. -benchtime=1x -count=1 -timeout 60m ./test/bench/...

# The fault suite (test/chaos, see its package doc): every fault on every runner, ROUNDS times,
# under load from a client that never retries, then the table of what broke. SEED=N replays the
# faults of a run (the seed is printed first). A heavy run: flock /tmp/forkd-heavy.lock make chaos
SEED          ?= 0
ROUNDS        ?= 2
CHAOS_TIMEOUT ?= 120m
chaos:
	$(GO) test -count=1 -v -timeout $(CHAOS_TIMEOUT) -run '^TestChaos$$' ./test/chaos \
	  -args -chaos.full -chaos.seed=$(SEED) -chaos.rounds=$(ROUNDS)

clean:
	rm -rf $(BIN)

# ---- Packages and the end-to-end suite under a real systemd (packaging/README.md, test/systemd).
.PHONY: package e2e

PKG_BUILD := packaging/build
PKG_DIST  := packaging/dist
PKG_ARCH  ?= $(shell $(GO) env GOARCH)
# A package version must start with a digit: tag v1.2.3 gives 1.2.3, three commits later
# 1.2.3+git3.gabcdef0; without a tag, 0.0.0~gitYYYYMMDD.abcdef0 (sorts before any release).
PKG_VERSION ?= $(shell v=$$(git describe --tags --match 'v[0-9]*' 2>/dev/null) && echo "$$v" | sed -e 's/^v//' -e 's/-\([0-9]*\)-g/+git\1.g/' || \
	git log -1 --format='0.0.0~git%cd.%h' --date=format:%Y%m%d 2>/dev/null || echo 0.0.0~dev)
# nfpm, pinned in its own module so that it never changes the versions forkd builds with.
NFPM := $(GO) tool -modfile=packaging/tools/go.mod nfpm

# .deb and .rpm in packaging/dist/: static forkd and forkctl, the units, man pages, completions.
# -s -w drops the symbol table and DWARF, not what Go needs for panics and goroutine dumps.
package:
	rm -rf $(PKG_BUILD) && mkdir -p $(PKG_BUILD)/man $(PKG_BUILD)/completion $(PKG_DIST)
	CGO_ENABLED=0 GOARCH=$(PKG_ARCH) $(GO) build -trimpath -ldflags "$(LDFLAGS) -s -w" -o $(PKG_BUILD)/forkd ./cmd/forkd
	CGO_ENABLED=0 GOARCH=$(PKG_ARCH) $(GO) build -trimpath -ldflags "$(LDFLAGS) -s -w" -o $(PKG_BUILD)/forkctl ./cmd/forkctl
	for page in forkd.8 forkctl.8 forkd.hcl.5; do gzip -9n <packaging/man/$$page >$(PKG_BUILD)/man/$$page.gz; done
	$(GO) run ./cmd/forkctl completion bash >$(PKG_BUILD)/completion/forkctl.bash
	$(GO) run ./cmd/forkctl completion zsh >$(PKG_BUILD)/completion/_forkctl
	$(GO) run ./cmd/forkctl completion fish >$(PKG_BUILD)/completion/forkctl.fish
	rm -f $(PKG_DIST)/forkd_*.deb $(PKG_DIST)/forkd-*.rpm
	for packager in deb rpm; do \
	  FORKD_PKG_VERSION='$(PKG_VERSION)' FORKD_PKG_ARCH=$(PKG_ARCH) \
	  SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || date +%s) \
	  $(NFPM) package --config packaging/nfpm.yaml --packager $$packager --target $(PKG_DIST)/ || exit 1; \
	done
	@ls -l $(PKG_DIST)

# Boot a real systemd in systemd-nspawn, install the .deb and run the scenarios (as root; it
# skips, saying why, where it cannot run, and fails instead with FORKD_E2E_REQUIRED=1).
E2E_TIMEOUT ?= 25m
e2e: package
	FORKD_E2E=1 FORKD_E2E_DEB="$$(ls $(CURDIR)/$(PKG_DIST)/forkd_*.deb)" \
	  $(GO) test -count=1 -v -timeout $(E2E_TIMEOUT) ./test/systemd
