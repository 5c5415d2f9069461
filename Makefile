# Locus. `make demo` shows it working; `make test` runs every test.
# Both install what is missing first (scripts/setup.sh).

CARGO ?= cargo

.PHONY: setup build demo test lint bench clean

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --release -p locus

demo: build
	@scripts/demo.sh

# Formatting and lints first: they fail fast and cheaply.
lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Every test, including the out-of-tree example policy built by a nested
# cargo (host/agent/tests/example_policy.rs).
test: lint
	$(CARGO) test --workspace

bench: setup
	$(CARGO) bench -p locus-policy --bench placement

clean:
	$(CARGO) clean
