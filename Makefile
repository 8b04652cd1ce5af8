.PHONY: run test build promtool
CARGO ?= cargo
TOPOLOGY ?= topology/two-site.toml

build:
	$(CARGO) build --workspace --bins

# Starts every store of the topology as its own process (the fabric CLI replaces this loop next).
run: build
	@scripts/run-stores.sh $(TOPOLOGY)

promtool:
	@command -v promtool >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus)

test: promtool build
	$(CARGO) nextest run --workspace --no-tests=pass
