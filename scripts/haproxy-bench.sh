#!/bin/sh
# Installs HAProxy and Postfix's smtp-sink/smtp-source when missing, and writes the HAProxy config of
# ../shared/anchors.md for `make bench`'s "redirector vs HAProxy" rows into DIR (plus a stats socket
# there, which the bench reads to see when a killed backend is marked down). Prints the config path.
# The bench starts HAProxy itself (`haproxy -db -f CONFIG`, in the foreground, as its child) and stops it.
# Usage: haproxy-bench.sh DIR [FRONTEND BACKEND1 BACKEND2]
set -eu
DIR=${1:?usage: haproxy-bench.sh DIR [FRONTEND BACKEND1 BACKEND2]}
FRONTEND=${2:-127.0.0.20:2525}
S1=${3:-127.0.0.21:2525}
S2=${4:-127.0.0.22:2525}
if ! command -v haproxy >/dev/null 2>&1 || ! command -v smtp-sink >/dev/null 2>&1 || ! command -v smtp-source >/dev/null 2>&1; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    (apt-get update -qq || true) >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy postfix >/dev/null
fi
mkdir -p "$DIR"
cat > "$DIR/haproxy.cfg" <<CFG
global
    maxconn 10000
    nbthread 2
    no strict-limits
    stats socket $DIR/haproxy.sock mode 600 level admin
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend smtp_in
    bind $FRONTEND
    default_backend smtp_sinks
backend smtp_sinks
    balance leastconn
    option smtpchk
    server s1 $S1 check inter 250 fall 2 rise 2
    server s2 $S2 check inter 250 fall 2 rise 2
CFG
haproxy -c -q -f "$DIR/haproxy.cfg"
echo "$DIR/haproxy.cfg"
