#!/usr/bin/env bash
# make test-docker: the two-site fabric as containers (project mailfabric-test), end to end.
#  1. fabric compose -> target/docker-test/{compose.yaml,topology.toml,var/tls}; up; every container healthy
#  2. mail in through the internet side (fabric send: MX in the fabric's DNS, then a router), read over
#     IMAP and POP3 through the isolated side's routers (STARTTLS with the fabric's CA)
#  3. from throwaway containers of our image on the internet and on the isolated network: every flow
#     the zone's access list refuses gets no path through the network (fabric-probe connect --expect
#     blocked: no route, or dropped by docker's isolation rules on the host, never an answer), every
#     flow it allows is open
# Everything is torn down on exit, failure included. Needs the image (make docker) and target/debug/fabric.
set -euo pipefail
cd "$(dirname "$0")/.."
COMPOSE=${COMPOSE:-docker-compose}
project=mailfabric-test
image=${IMAGE:-mailfabric:latest}
dir=target/docker-test
fabric=target/debug/fabric
topology=${TOPOLOGY:-topology/two-site.toml}
start=$(date +%s)
say() { printf '[test-docker %3ds] %s\n' $(( $(date +%s) - start )) "$*"; }

dc() { $COMPOSE -p "$project" -f "$dir/compose.yaml" "$@"; }
cleanup() {
    rc=$?
    if [ $rc -ne 0 ] && [ -f "$dir/compose.yaml" ]; then
        say "FAILED; last log lines of each container:"
        dc logs --no-color --tail 5 2>&1 | tail -n 150 || true
    fi
    say "tearing down"
    [ -f "$dir/compose.yaml" ] && dc down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
    exit $rc
}
trap cleanup EXIT

rm -rf "$dir"
"$fabric" compose "$topology" -o "$dir/compose.yaml" --image "$image"
say "up"
dc up -d --quiet-pull 2>&1 | tail -n 3

say "waiting for every container to be healthy"
deadline=$(( $(date +%s) + 150 ))
while :; do
    states=$(docker ps -a --filter "label=com.docker.compose.project=$project" \
        --format '{{.Names}} {{.Status}}')
    total=$(echo "$states" | grep -c . || true)
    healthy=$(echo "$states" | grep -c '(healthy)' || true)
    [ "$total" -gt 0 ] && [ "$healthy" -eq "$total" ] && break
    if [ "$(date +%s)" -gt "$deadline" ]; then
        echo "$states" | grep -v '(healthy)' >&2
        say "not every container became healthy ($healthy/$total)"; exit 1
    fi
    sleep 2
done
say "$total containers healthy"

export FABRIC_DATA_DIR=$dir/var
password=docker-$(date +%s)
for user in ann@acme.example bob@globex.example; do
    "$fabric" user add "$user" --password "$password" >/dev/null
done
say "sending through the internet side"
"$fabric" send --from me@remote.example --to ann@acme.example --subject "docker to west"
"$fabric" send --from me@remote.example --to bob@globex.example --subject "docker to east"

say "reading over IMAP and POP3 through the isolated side"
python3 - "$dir/topology.toml" "$dir/var/tls/ca.pem" "$password" <<'PY'
import imaplib, poplib, ssl, sys, time, tomllib
topology, ca, password = sys.argv[1:]
t = tomllib.load(open(topology, "rb"))
routers = {n["name"]: n for n in t["node"] if n["role"] == "router" and n["zones"] == ["isolated"]}
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False   # a router's address in front of the intranet server's certificate
def imap(router, user, subject):
    n = routers[router]
    m = imaplib.IMAP4(n["address"], n["ports"]["imap"])
    m.starttls(ssl_context=ctx)
    m.login(user, password)
    m.select("INBOX")
    found = subject.encode() in b"".join(
        x if isinstance(x, bytes) else b"".join(x) for x in m.fetch("1:*", "(BODY.PEEK[HEADER])")[1] if x)
    m.logout()
    return found
def pop3(router, user, subject):
    n = routers[router]
    p = poplib.POP3(n["address"], n["ports"]["pop3"])
    p.stls(context=ctx)
    p.user(user); p.pass_(password)
    count = p.stat()[0]
    found = any(subject.encode() in b"\n".join(p.retr(i)[1]) for i in range(1, count + 1))
    p.quit()
    return found
checks = [("IMAP", imap, "router-iso-w1", "ann@acme.example", "docker to west"),
          ("POP3", pop3, "router-iso-e1", "bob@globex.example", "docker to east")]
deadline = time.time() + 60
for what, read, router, user, subject in checks:
    while True:
        try:
            if read(router, user, subject):
                print(f"  {what} via {router}: {user} has {subject!r}")
                break
            why = "not there yet"
        except Exception as e:
            why = repr(e)
        if time.time() > deadline:
            sys.exit(f"{what} via {router}: {user} never got {subject!r}: {why}")
        time.sleep(1)
PY

for zone in internet isolated; do
    net="${project}_${zone}"
    refused=$("$fabric" compose "$topology" --flows "$zone" | awk '$1=="refused"{print $3}')
    allowed=$("$fabric" compose "$topology" --flows "$zone" | awk '$1=="allowed"{print $3}')
    say "$zone: $(echo "$refused" | wc -l) refused flows must have no path, $(echo "$allowed" | wc -l) allowed ones must be open"
    docker run --rm --network "$net" "$image" fabric-probe connect --expect blocked $refused \
        > "$dir/flows-$zone.txt" || { grep UNEXPECTED "$dir/flows-$zone.txt" >&2; say "$zone: a refused flow is reachable"; exit 1; }
    docker run --rm --network "$net" "$image" fabric-probe connect --expect open $allowed \
        >> "$dir/flows-$zone.txt" || { grep UNEXPECTED "$dir/flows-$zone.txt" >&2; say "$zone: an allowed flow is closed"; exit 1; }
    head -n 3 "$dir/flows-$zone.txt" | sed 's/^/  /'
done
say "PASS"
