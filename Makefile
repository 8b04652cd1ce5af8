.PHONY: run test build bench promtool tools down status chaos chaos-docker docker compose-up compose-down test-docker
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

# Every benchmark in one interleaved run (the raw fsync rate of this disk beside the store's mirrored
# write rate, SMTP vs Postfix, reading vs Dovecot, the edge vs HAProxy, continuity); the run's summary
# table, with its date, commit and machine, replaces the section between the bench:latest markers of
# docs/benchmarks.md. BENCH_ARGS='--rounds 3 --note "..."' to shorten it or annotate the header.
bench:
	$(CARGO) build --release --workspace --bins
	target/release/fabric-bench $(BENCH_ARGS) --write-docs docs/benchmarks.md

# A seeded fault campaign (`fabric chaos`, docs/operations.md) against a fabric of its own on loopback,
# in a fresh CHAOS_DATA (kept until the next run: nodes' logs and record.json). Stop `make run` first
# (same ports), or run `target/debug/fabric chaos --attach` against it instead.
# Replay a campaign with CHAOS_ARGS="--seed N ...".
CHAOS_DATA ?= $(CURDIR)/var-chaos
CHAOS_ARGS ?= --messages 1000 --faults 10 --duration 120
chaos: build
	rm -rf $(CHAOS_DATA)
	target/debug/fabric --data-dir $(CHAOS_DATA) chaos $(TOPOLOGY) --record $(CHAOS_DATA)/record.json $(CHAOS_ARGS)

# The same campaign against the compose deployment (make compose-up first, or this deploys it): faults
# through the Docker Engine, partitions included. make chaos-docker CHAOS_ARGS="--messages 5000 ..."
chaos-docker: compose-up
	target/debug/fabric --data-dir docker/var chaos --docker mailfabric --record docker/var/chaos.json $(CHAOS_ARGS)

# --- docker: one image FROM scratch (nothing is pulled), the compose deployment, its test ---
PROFILE ?= debug
# `docker compose` (v2) when the plugin is there, else docker-compose (v1.27+ reads the same file).
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
export COMPOSE

docker:
	$(CARGO) build --workspace --bins $(if $(filter release,$(PROFILE)),--release)
	docker/build-image.sh $(PROFILE)

# The default two-site fabric as containers (project mailfabric); zones are internal networks.
compose-up: docker
	target/debug/fabric compose $(TOPOLOGY) -o docker/compose.yaml --project mailfabric
	$(COMPOSE) -p mailfabric -f docker/compose.yaml up -d
	@echo "operate it with: target/debug/fabric --data-dir docker/var user add|send|trace|queue ..."

# Stops and removes the containers and networks; the stores' named volumes stay (add -v to drop them).
compose-down:
	$(COMPOSE) -p mailfabric -f docker/compose.yaml down --remove-orphans

# Builds the image, deploys (project mailfabric-test), mail in through the internet side and out over
# IMAP and POP3 on the isolated side, every refused flow of each access list unreachable; tears down.
test-docker: docker
	docker/test-docker.sh
