# forkd: build, run the demo, test, lint, benchmark.
GO      ?= go
BIN     := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/forkd/forkd/internal/version.Version=$(VERSION)
# Fuzz targets run briefly in `make test`; longer with e.g. `make fuzz FUZZTIME=5m`.
FUZZTIME ?= 10s
STATICCHECK ?= $(shell command -v staticcheck 2>/dev/null || echo $(shell $(GO) env GOPATH)/bin/staticcheck)

.PHONY: all build run run-go test unit fuzz lint bench clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/forkd ./cmd/forkd
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/forkctl ./cmd/forkctl
	$(GO) build -o $(BIN)/hello ./examples/hello

# Serve the Python demo on 127.0.0.1:8080 with 4 workers in fork-worker mode. Try:
#   curl 127.0.0.1:8080; bin/forkctl --config examples/python/forkd.hcl status
run: build
	$(BIN)/forkd --config examples/python/forkd.hcl

# The same with the Go demo (exec mode: Go cannot fork).
run-go: build
	$(BIN)/forkd --config examples/hello/forkd.hcl

test: lint unit fuzz

unit:
	$(GO) test -race -count=1 -timeout 20m ./...
	python3 -m unittest discover -s sdk/python/tests -t sdk/python

fuzz:
	$(GO) test -run='^$$' -fuzz=FuzzParse -fuzztime=$(FUZZTIME) ./pkg/config
	$(GO) test -run='^$$' -fuzz=FuzzParse -fuzztime=$(FUZZTIME) ./pkg/notify
	$(GO) test -run='^$$' -fuzz=FuzzDecode -fuzztime=$(FUZZTIME) ./pkg/protocol

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	@if [ -x "$(STATICCHECK)" ]; then $(STATICCHECK) ./...; \
	  else echo "staticcheck not installed (go install honnef.co/go/tools/cmd/staticcheck@latest); skipped"; fi

bench:
	$(GO) test -run='^$$' -bench=. -benchtime=1x -count=1 -timeout 30m ./test/bench/...

clean:
	rm -rf $(BIN)
