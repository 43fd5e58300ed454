# phased — make help lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

GO      ?= go
BIN     := bin
PLUGINS := $(BIN)/plugins
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PROTOC_VERSION := 3.21.12
PROTO_OUT ?= sdk/proto
PY_PROTO_OUT ?= sdk/python/phased/_proto
AGENT_PROTO_OUT ?= supervisor
CUDA_CACHE ?= .cache/cuda
DEVICE_DIR ?= .cache/device
CUDA_ENV   := CGO_CFLAGS="-I$(abspath $(CUDA_CACHE))/root/usr/include" CGO_LDFLAGS="-L$(abspath $(CUDA_CACHE))/root/usr/lib/x86_64-linux-gnu"
# Fuzz budgets count executions, not seconds: a duration-based -fuzztime
# can fail with a spurious "context deadline exceeded" on Go 1.26
# (golang/go#75804, fixed in Go 1.27).
FUZZTIME     ?= 2000000x
# Fuzz targets as PACKAGE:TARGET: every decoder of bytes from the network (the control channel's frames among them),
# the control API's JSON, the config decoder, and what a plugin writes on stderr.
FUZZ := ./sdk/internal/unixrpc:FuzzFrame ./sdk/transfer:FuzzDescriptor ./sdk/transfer:FuzzStatusFrame ./sdk/transfer:FuzzTensorHeader \
	./sdk/transfer:FuzzDataHeader ./supervisor:FuzzControlAPI ./supervisor:FuzzConfig ./supervisor:FuzzPluginStderr
# What builds without cgo (no libzmq): the plugin contract and everything a
# policy plugin links. make check proves it.
NOCGO := ./sdk ./sdk/tensor ./sdk/plugintest ./sdk/policytest ./sdk/scalertest ./policies/... ./scalers/...
# The Python SDK and the Python phases run on Debian's interpreter and
# packages (no pip): PYTHON must be that interpreter, not a pyenv or venv one.
PYTHON  ?= /usr/bin/python3
PY_DEBS := python3-grpcio python3-protobuf python3-zmq python3-numpy python3-xxhash python3-cryptography python3-pytest python3-pyflakes python3-torch python3-pil
PY_MODS := grpc, google.protobuf, zmq, numpy, xxhash, cryptography, pytest, pyflakes, torch, PIL
PY_PHASES := $(wildcard examples/toy-python/phased-phase-* examples/t2v-tiny/phased-phase-*)
PYTEST  := PYTHONPATH=$(CURDIR)/sdk/python $(PYTHON) -m pytest -q -p no:cacheprovider --rootdir=$(CURDIR)
PROMPT  ?= a red fox running through fresh snow
COUNT   ?= 4

CHAOS_REQUESTS ?= 200

.PHONY: help deps test-deps build run test bench train-t2v run-t2v chaos fuzz fuzz-short proto docs check clean cuda-deps cuda device-pack

help: ## show this help
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

deps: ## install what the build needs (libzmq, and Python's packages for the Python SDK, from Debian) if missing
	@pkg-config --exists libzmq 2>/dev/null && $(PYTHON) -c "import $(PY_MODS)" 2>/dev/null || { \
	  echo "installing libzmq3-dev and $(PY_DEBS) (apt-get)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libzmq3-dev pkg-config $(PY_DEBS) >/dev/null; }

test-deps: deps ## what the tests need beyond the build: headless chromium for the dashboard's test, etcd and iproute2 for the multi-host test (Debian), if missing
	@command -v chromium >/dev/null && command -v etcd >/dev/null && command -v etcdctl >/dev/null && command -v ip >/dev/null && command -v ping >/dev/null || { \
	  echo "installing chromium etcd-server etcd-client iproute2 iputils-ping (apt-get)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium etcd-server etcd-client iproute2 iputils-ping >/dev/null; }

build: deps ## build bin/supervisor and the plugins in bin/plugins (the Python phases of examples/ linked in)
	$(GO) build -o $(BIN)/ ./supervisor/cmd/supervisor
	$(GO) build -o $(PLUGINS)/ ./plugins/encoder/cmd/phased-phase-encoder ./plugins/transformer/cmd/phased-phase-transformer ./plugins/decoder/cmd/phased-phase-decoder ./policies/... ./scalers/...
	@# The Python phases run from the tree: link them in beside the Go ones.
	@for f in $(PY_PHASES); do ln -sfn $(CURDIR)/$$f $(PLUGINS)/; done

run: build ## set up, build, and run the demo on the embedded default config
	$(BIN)/supervisor run --prompt "$(PROMPT)" --count $(COUNT) --out out

test: build test-deps ## run every test with -race (unit, gRPC in memory, end to end, the short chaos test, the example modules), the Python SDK's and models' tests, then fuzz each decoder briefly
	$(PYTEST) sdk/python/tests examples/toy-python examples/t2v-tiny
	$(GO) test -race -count=1 -timeout 25m ./...
	cd examples/policies && $(GO) vet ./... && $(GO) test -race -count=1 ./...
	cd examples/phases && $(GO) vet ./... && $(GO) test -race -count=1 ./...
	$(MAKE) -s fuzz-short

train-t2v: deps ## train examples/t2v-tiny's model again (seeded; under 30 min on 2 cores) into examples/t2v-tiny/t2v-tiny.pt
	cd examples/t2v-tiny && $(PYTHON) -m t2v.train --out t2v-tiny.pt
	sha256sum examples/t2v-tiny/t2v-tiny.pt

T2V_PROMPTS ?= --prompt "a red circle moving left" --prompt "a blue square moving up" --prompt "a yellow triangle moving right"

run-t2v: build ## run three prompts through the supervisor with the tiny text-to-video model (three Python phases) and print each GIF's path
	$(BIN)/supervisor run --config examples/configs/t2v-tiny.hcl $(T2V_PROMPTS) --out out/t2v

chaos: deps ## the chaos test: CHAOS_REQUESTS (200) requests, an instance SIGKILLed every 0.5 s, the supervisor killed once; last line: the counts
	@mkdir -p $(BIN); set -o pipefail; PHASED_CHAOS_REQUESTS=$(CHAOS_REQUESTS) $(GO) test -race -count=1 -timeout 14m -run '^TestChaos$$' -v ./supervisor/e2e/ \
	  | tee $(BIN)/chaos.log | grep -E '^(--- |FAIL|ok|\s+chaos_test)' ; \
	  grep -h '^chaos:' $(BIN)/chaos.log

fuzz-short: ## run each fuzz target (transfer decoders, control API, config) for 20,000 inputs (part of make test)
	@set -e; for pt in $(FUZZ); do $(GO) test -run '^$$' -fuzz "^$${pt#*:}\$$" -fuzztime 20000x -fuzzminimizetime 100x $${pt%%:*}; done

fuzz: ## run each fuzz target for FUZZTIME inputs (default 2000000x)
	@set -e; for pt in $(FUZZ); do $(GO) test -run '^$$' -fuzz "^$${pt#*:}\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 1000x $${pt%%:*}; done

bench: build ## run the benchmarks and print the side-by-side ratios
	set -o pipefail; $(GO) test -run '^$$' -bench . -benchtime 2s -count 1 ./sdk/... ./policies/... ./supervisor/... | tee bench.txt
	@$(GO) run ./supervisor/internal/benchratio < bench.txt

proto: ## regenerate the protobuf code with the pinned generators
	@protoc --version | grep -q ' $(PROTOC_VERSION)$$' || { echo "protoc $(PROTOC_VERSION) is required (Debian 12: apt-get install protobuf-compiler); found: $$(protoc --version)"; exit 1; }
	protoc -I sdk/proto \
	  --plugin=protoc-gen-go="$$($(GO) tool -n protoc-gen-go)" \
	  --plugin=protoc-gen-go-grpc="$$($(GO) tool -n protoc-gen-go-grpc)" \
	  --go_out=$(PROTO_OUT) --go_opt=paths=source_relative \
	  --go-grpc_out=$(PROTO_OUT) --go-grpc_opt=paths=source_relative \
	  sdk/proto/phasedv1/*.proto
	@mkdir -p $(PY_PROTO_OUT)/phasedv1
	protoc -I sdk/proto --python_out=$(PY_PROTO_OUT) sdk/proto/phasedv1/*.proto
	@# protoc names the package by its path under -I; the SDK vendors it as phased._proto.
	sed -i 's/^from phasedv1 import /from phased._proto.phasedv1 import /' $(PY_PROTO_OUT)/phasedv1/*_pb2.py
	@# The supervisor's own service to its agents (Go only, not the plugin contract).
	@mkdir -p $(AGENT_PROTO_OUT)/agentv1
	protoc -I supervisor \
	  --plugin=protoc-gen-go="$$($(GO) tool -n protoc-gen-go)" \
	  --plugin=protoc-gen-go-grpc="$$($(GO) tool -n protoc-gen-go-grpc)" \
	  --go_out=$(AGENT_PROTO_OUT) --go_opt=paths=source_relative \
	  --go-grpc_out=$(AGENT_PROTO_OUT) --go-grpc_opt=paths=source_relative \
	  supervisor/agentv1/*.proto

docs: deps ## rewrite README.md's CLI reference (between its cli-reference markers) from the command tree
	$(GO) run ./supervisor/cmd/supervisor docs --update README.md

check: deps ## gofmt, go vet, pyflakes, the contract and the policies built without cgo, and fail when generated code or README's CLI reference is stale
	@out=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$out" ] || { echo "gofmt would change: $$out"; exit 1; }
	$(PYTHON) -m pyflakes $$(git ls-files '*.py' | grep -v '/_proto/') $$(git ls-files 'examples/*/phased-phase-*' | xargs -r grep -l '^#!.*python')
	$(GO) vet ./...
	CGO_ENABLED=0 $(GO) vet $(NOCGO)
	cd examples/policies && CGO_ENABLED=0 $(GO) vet ./...
	$(GO) run ./supervisor/cmd/supervisor docs --check README.md
	@command -v protoc >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null; }
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	$(MAKE) -s proto PROTO_OUT=$$tmp PY_PROTO_OUT=$$tmp/py AGENT_PROTO_OUT=$$tmp/agent && \
	for f in $$tmp/agent/agentv1/*.go; do cmp -s $$f supervisor/agentv1/$$(basename $$f) || { echo "generated code is stale: supervisor/agentv1/$$(basename $$f); run make proto and commit"; exit 1; }; done; \
	for f in $$tmp/phasedv1/*.go; do cmp -s $$f sdk/proto/phasedv1/$$(basename $$f) || { echo "generated code is stale: sdk/proto/phasedv1/$$(basename $$f); run make proto and commit"; exit 1; }; done; \
	for f in $$tmp/py/phasedv1/*.py; do cmp -s $$f $(PY_PROTO_OUT)/phasedv1/$$(basename $$f) || { echo "generated code is stale: $(PY_PROTO_OUT)/phasedv1/$$(basename $$f); run make proto and commit"; exit 1; }; done; \
	[ $$(ls $$tmp/phasedv1/*.go | wc -l) = $$(ls sdk/proto/phasedv1/*.go | wc -l) ] || { echo "sdk/proto/phasedv1 holds generated files that no .proto produces"; exit 1; }; \
	[ $$(ls $$tmp/py/phasedv1/*_pb2.py | wc -l) = $$(ls $(PY_PROTO_OUT)/phasedv1/*_pb2.py | wc -l) ] || { echo "$(PY_PROTO_OUT)/phasedv1 holds generated files that no .proto produces"; exit 1; }; \
	echo "check: ok"

cuda-deps: ## fetch cuda.h and libcuda.so.1 from Debian non-free into .cache/cuda
	scripts/cuda-deps.sh $(CUDA_CACHE)

cuda: deps cuda-deps ## build with -tags cuda into bin/cuda (those binaries run only where there is a GPU)
	$(CUDA_ENV) $(GO) vet -tags cuda ./...
	$(CUDA_ENV) $(GO) build -tags cuda -o $(BIN)/cuda/ ./supervisor/cmd/supervisor ./plugins/encoder/cmd/phased-phase-encoder ./plugins/transformer/cmd/phased-phase-transformer ./plugins/decoder/cmd/phased-phase-decoder ./policies/... ./scalers/...
	$(CUDA_ENV) $(GO) test -c -tags cuda -o $(BIN)/cuda/cuda.test ./sdk/transfer/cuda
	$(CUDA_ENV) $(GO) test -c -tags cuda -o $(BIN)/cuda/twoproc.test ./sdk/transfer/twoproc

device-pack: deps cuda-deps ## build the cuda test binaries and their libraries into .cache/device, to carry to a GPU machine
	scripts/device-pack.sh $(DEVICE_DIR)

clean: ## remove build outputs and artifacts
	rm -rf $(BIN) out bench.txt
