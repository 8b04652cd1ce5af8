.PHONY: run test build bench promtool tools down status chaos
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

# Tools the tests drive: promtool (Prometheus) checks /metrics, swaks is an SMTP client nobody here wrote,
# dig (Debian's dnsutils) is the DNS client that asks the fabric's DNS.
tools:
	@command -v promtool >/dev/null && command -v swaks >/dev/null && command -v dig >/dev/null && perl -MNet::SSLeay -e1 2>/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus swaks dnsutils libnet-ssleay-perl libio-socket-ssl-perl)

promtool: tools

test: tools build
	$(CARGO) nextest run --workspace --no-tests=pass

# Raw fsync rate of this disk beside the store's mirrored write rate, in one interleaved run.
bench:
	$(CARGO) build --release --workspace --bins
	target/release/fabric-bench $(BENCH_ARGS)

# A seeded fault campaign (`fabric chaos`, docs/operations.md) against a fabric of its own on loopback,
# in a fresh CHAOS_DATA (kept until the next run: nodes' logs and record.json). Stop `make run` first
# (same ports), or run `target/debug/fabric chaos --attach` against it instead.
# Replay a campaign with CHAOS_ARGS="--seed N ...".
CHAOS_DATA ?= $(CURDIR)/var-chaos
CHAOS_ARGS ?= --messages 1000 --faults 10 --duration 120
chaos: build
	rm -rf $(CHAOS_DATA)
	target/debug/fabric --data-dir $(CHAOS_DATA) chaos $(TOPOLOGY) --record $(CHAOS_DATA)/record.json $(CHAOS_ARGS)
