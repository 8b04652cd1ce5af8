.PHONY: run test build bench promtool down status
CARGO ?= cargo
TOPOLOGY ?= topology/two-site.toml
export FABRIC_DATA_DIR ?= $(CURDIR)/var

build:
	$(CARGO) build --workspace --bins

# Starts every node of the topology as its own process and supervises them; Ctrl-C stops them all.
run: build
	target/debug/fabric up $(TOPOLOGY)

status:
	@target/debug/fabric status

down:
	@target/debug/fabric down

promtool:
	@command -v promtool >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus)

test: promtool build
	$(CARGO) nextest run --workspace --no-tests=pass

# Raw fsync rate of this disk beside the store's mirrored write rate, in one interleaved run.
bench:
	$(CARGO) build --release --workspace --bins
	target/release/fabric-bench $(BENCH_ARGS)
