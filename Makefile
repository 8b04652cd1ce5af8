.PHONY: run test build bench promtool tools down status
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
