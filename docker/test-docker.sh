#!/usr/bin/env bash
# make test-docker: the two-site fabric as containers (project mailfabric-test), end to end.
#  1. fabric compose -> target/docker-test/{compose.yaml,topology.toml,var/tls}; up; every container healthy
#  2. mail in through the internet side (fabric send: MX in the fabric's DNS, then a router), read over
#     IMAP and POP3 through the isolated side's routers (STARTTLS with the fabric's CA)
#  3. from throwaway containers of our image on the internet and on the isolated network: every flow
#     the zone's access list refuses gets no path through the network (fabric-probe connect --expect
#     blocked: no route, or dropped by docker's isolation rules on the host, never an answer), every
#     flow it allows is open
#  4. standby containers: inet-mx-w1 killed, supervisor-e starts a container at its addresses (mail
#     flows through it), a killed supervisor adopts it, fail-back; a node cut off from the supervisor
#     by a partition but healthy in its container gets no standby
#  5. a seeded `fabric chaos --docker` campaign (CHAOS_DOCKER_ARGS): exits non-zero on loss or duplicate
# Everything is torn down on exit, failure included. Needs the image (make docker) and target/debug/fabric.
set -euo pipefail
cd "$(dirname "$0")/.."
COMPOSE=${COMPOSE:-docker-compose}
project=mailfabric-test
image=${IMAGE:-mailfabric:latest}
# Named before the exit trap, which removes it.
blocker=mailfabric-test-blocker
dir=target/docker-test
fabric=target/debug/fabric
topology=${TOPOLOGY:-topology/two-site.toml}
start=$(date +%s)
say() { printf '[test-docker %3ds] %s\n' $(( $(date +%s) - start )) "$*"; }

# A network an engine cannot remove ("has active endpoints" with no container left: a stale endpoint
# the engine sometimes keeps after this run's own teardown, cause unknown) must not stop a run: endpoints are
# forced off, and should one stay, this run takes a project name of its own (`fabric compose` keeps
# its networks clear of the old one's subnets).
remove_network() {
    local net=$1 attached ep
    # A container of that run outside the project (a standby, a probe) may still sit on it.
    attached=$(docker ps -aq --filter "network=$net")
    [ -z "$attached" ] || docker rm -f $attached >/dev/null 2>&1 || true
    for ep in $(docker network inspect -f '{{range $id, $c := .Containers}}{{$c.Name}} {{end}}' "$net" 2>/dev/null); do
        docker network disconnect -f "$net" "$ep" >/dev/null 2>&1 || true
    done
    docker network rm "$net" >/dev/null 2>&1
}
dc() { $COMPOSE -p "$project" -f "$dir/compose.yaml" "$@"; }
cleanup() {
    rc=$?
    if [ $rc -ne 0 ] && [ -f "$dir/compose.yaml" ]; then
        say "FAILED; last log lines of each container:"
        dc logs --no-color --tail 5 2>&1 | tail -n 150 || true
    fi
    say "tearing down"
    [ -f "$dir/compose.yaml" ] && dc down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
    for net in $(docker network ls -q --filter "label=com.docker.compose.project=$project"); do
        remove_network "$net" \
            || say "the engine kept network $net (an endpoint with no container: gone when dockerd restarts; the next run works around it)"
    done
    docker network rm "$blocker" >/dev/null 2>&1 || true
    exit $rc
}
trap cleanup EXIT

# Leftovers of an earlier run that could not tear down (its compose file is gone with $dir).
leftovers=$(docker ps -aq --filter "label=com.docker.compose.project=$project")
[ -z "$leftovers" ] || docker rm -f $leftovers >/dev/null
leftovers=$(docker network ls -q --filter "label=com.docker.compose.project=$project")
for net in $leftovers; do
    if ! remove_network "$net"; then
        say "leftover network $(docker network inspect -f '{{.Name}}' "$net" 2>/dev/null || echo "$net") cannot be removed (stale endpoint in the engine)"
        project="mailfabric-test-$$"
        say "this run uses project $project"
        break
    fi
done
rm -rf "$dir"

# A network of someone else's on part of lan-west's mapped place (10.1.0.0/16): docker refuses an
# overlapping network ("Pool overlaps"), so `fabric compose` must move lan-west to a free block.
docker network rm "$blocker" >/dev/null 2>&1 || true
docker network create --internal --subnet 10.1.250.0/24 "$blocker" >/dev/null \
    || say "10.1.250.0/24 is already in use on this host (lan-west must move all the same)"
# Another run on this engine may create an overlapping network between our look and our `up`:
# look again and retry.
for try in 1 2 3; do
    "$fabric" compose "$topology" -o "$dir/compose.yaml" --image "$image" --project "$project"
    say "up (try $try)"
    if dc up -d --quiet-pull > "$dir/up.log" 2>&1; then
        tail -n 3 "$dir/up.log"; break
    fi
    cat "$dir/up.log" >&2
    grep -q "Pool overlaps" "$dir/up.log" && [ "$try" -lt 3 ] || exit 1
    dc down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
done
python3 - "$dir/topology.toml" <<'PY'
import ipaddress, sys, tomllib
zones = {z["name"]: ipaddress.ip_network(z["cidr"]) for z in tomllib.load(open(sys.argv[1], "rb"))["zone"]}
assert not zones["lan-west"].overlaps(ipaddress.ip_network("10.1.250.0/24")), zones
print(f"  lan-west is {zones['lan-west']} (its mapped place 10.1.0.0/16 is in use)")
PY

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
    refused=$("$fabric" compose "$topology" --project "$project" --flows "$zone" | awk '$1=="refused"{print $3}')
    allowed=$("$fabric" compose "$topology" --project "$project" --flows "$zone" | awk '$1=="allowed"{print $3}')
    say "$zone: $(echo "$refused" | wc -l) refused flows must have no path, $(echo "$allowed" | wc -l) allowed ones must be open"
    docker run --rm --network "$net" "$image" fabric-probe connect --expect blocked $refused \
        > "$dir/flows-$zone.txt" || { grep UNEXPECTED "$dir/flows-$zone.txt" >&2; say "$zone: a refused flow is reachable"; exit 1; }
    docker run --rm --network "$net" "$image" fabric-probe connect --expect open $allowed \
        >> "$dir/flows-$zone.txt" || { grep UNEXPECTED "$dir/flows-$zone.txt" >&2; say "$zone: an allowed flow is closed"; exit 1; }
    head -n 3 "$dir/flows-$zone.txt" | sed 's/^/  /'
done

# --- standby containers (the supervisor through the Docker Engine API) ---
ctr() { docker ps -aq --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.service=$1"; }
token=$(awk -F'"' '/^operator_token/{print $2; exit}' "$dir/topology.toml")
sup_e=$(awk '/name = "supervisor-e"/{f=1} f&&/^address/{print $3; exit}' "$dir/topology.toml" | tr -d '"')
mx_w1=$(awk '/name = "inet-mx-w1"/{f=1} f&&/^address/{print $3; exit}' "$dir/topology.toml" | tr -d '"')
say "standby: docker kill inet-mx-w1, supervisor-e stands in with a container at $mx_w1"
docker kill "$(ctr inet-mx-w1)" >/dev/null
answer=$(curl -sf -XPOST "http://$sup_e:7300/v1/standby" -H 'content-type: application/json' \
    -d '{"node": "inet-mx-w1", "reason": "make test-docker"}')
echo "  $answer"
echo "$answer" | grep -q '"state":"serving"' || { say "no standby serving inet-mx-w1"; exit 1; }
standby=$(docker ps -q --filter "label=mailfabric.standby-for=inet-mx-w1" --filter "label=mailfabric.standby-by=supervisor-e")
[ -n "$standby" ] || { say "no standby container runs"; exit 1; }
python3 - "$mx_w1" <<'PY'
import socket, sys
greeting = socket.create_connection((sys.argv[1], 2525), 5).recv(200)
assert greeting.startswith(b"220 inet-mx-w1"), greeting
print("  the standby greets at inet-mx-w1's address:", greeting.decode().strip())
PY
"$fabric" send --from me@remote.example --to ann@acme.example --subject "docker standby" >/dev/null
say "a killed supervisor adopts its standby container when it comes back"
docker kill "$(ctr supervisor-e)" >/dev/null; docker start "$(ctr supervisor-e)" >/dev/null
for _ in $(seq 50); do curl -sf "http://$sup_e:7300/v1/standby" 2>/dev/null | grep -q '"node":"inet-mx-w1"' && break; sleep 0.2; done
curl -sf "http://$sup_e:7300/v1/standby" | grep -q "\"container\":\"$standby" || { say "not adopted"; exit 1; }
say "fail-back: the supervisor retires its standby container, the original starts"
curl -sf -XDELETE -H "authorization: Bearer $token" "http://$sup_e:7300/v1/standby/inet-mx-w1" | sed 's/^/  /'; echo
[ -z "$(docker ps -aq --filter label=mailfabric.standby-for=inet-mx-w1)" ] || { say "the standby container is still there"; exit 1; }
docker start "$(ctr inet-mx-w1)" >/dev/null
say "a partition is not a death: supervisor-e loses its leg on lan-west and is asked for intranet-w2"
sup_e_west=$(docker inspect -f "{{(index .NetworkSettings.Networks \"${project}_lan-west\").IPAddress}}" "$(ctr supervisor-e)")
docker network disconnect "${project}_lan-west" "$(ctr supervisor-e)"
answer=$(curl -sf -XPOST "http://$sup_e:7300/v1/standby" -H 'content-type: application/json' -d '{"node": "intranet-w2"}')
docker network connect --ip "$sup_e_west" "${project}_lan-west" "$(ctr supervisor-e)"
echo "  $answer"
echo "$answer" | grep -q '"state":"cut-off"' || { say "a healthy, unreachable node got a standby"; exit 1; }
[ "$(docker inspect -f '{{.State.Running}}' "$(ctr intranet-w2)")" = true ] || { say "intranet-w2 was fenced"; exit 1; }

# --- a seeded chaos campaign against the containers (kills, pauses, restarts, a site down, partitions) ---
say "chaos campaign on docker"
"$fabric" --data-dir "$dir/var" chaos --docker "$project" --record "$dir/chaos.json" ${CHAOS_DOCKER_ARGS:---seed 20261123 --messages 300 --faults 8 --duration 100} \
    2> "$dir/chaos.log" | tee "$dir/chaos.txt" | sed 's/^/  /'
say "PASS"
