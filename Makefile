# Locus. `make demo` shows it working; `make test` runs every test.
# Both install what is missing first (scripts/setup.sh).

CARGO ?= cargo
EXAMPLE_TARGET := $(CURDIR)/target/example

.PHONY: setup build demo test lint example bench clean

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

# The out-of-tree example policy, built and checked the way the policy
# author's guide says.
example: setup
	cd examples/my-policy && CARGO_TARGET_DIR=$(EXAMPLE_TARGET) $(CARGO) test --quiet
	cd examples/my-policy && CARGO_TARGET_DIR=$(EXAMPLE_TARGET) $(CARGO) build --quiet --release --target wasm32-wasip2
	$(CARGO) run --quiet -p locus -- policy check $(EXAMPLE_TARGET)/wasm32-wasip2/release/least_power.wasm

test: lint
	$(CARGO) test --workspace
	$(MAKE) --no-print-directory example

bench: setup
	$(CARGO) bench -p locus-policy --bench placement

clean:
	$(CARGO) clean
