# Locus. `make demo` shows it working; `make test` runs every test.
# Both install what is missing first (scripts/setup.sh).

CARGO ?= cargo

.PHONY: setup libvirtd build demo test lint bench clean

setup:
	@scripts/setup.sh

# A system libvirtd with QEMU for the tests with real guests, and a second
# one standing for another host, for live migrations (root; no systemd needed).
libvirtd:
	@scripts/libvirtd.sh start
	@scripts/libvirtd-peer.sh start

build: setup
	$(CARGO) build --release -p locus

demo: build
	@scripts/demo.sh

# Formatting and lints first: they fail fast and cheaply.
lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Every test, including the out-of-tree example policy built by a nested
# cargo (host/agent/tests/example_policy.rs) and the agent against a real
# libvirtd with QEMU guests (host/agent/tests/agent_libvirtd_qemu.rs).
test: lint libvirtd
	$(CARGO) test --workspace

bench: setup
	$(CARGO) bench -p locus-policy --bench placement
	$(CARGO) run --release -p locus -- bench vms --count 1000 --concurrency 16

clean:
	$(CARGO) clean
