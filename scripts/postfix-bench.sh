#!/bin/sh
# Installs and configures Postfix as a durable receiver on 127.0.0.1:2525 for `make bench`, the way
# ../shared/anchors.md describes: virtual Maildir for bench.example, nothing ever leaves the machine
# (default_transport and relay_transport are error:). Idempotent; prints the Maildir path.
set -eu
MAILDIR_BASE=${MAILDIR_BASE:-/var/tmp/fabric-bench-maildir}
if ! command -v postfix >/dev/null 2>&1 || ! command -v smtp-source >/dev/null 2>&1; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    (apt-get update -qq || true) >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi
getent group vmail >/dev/null || groupadd -g 5000 vmail
getent passwd vmail >/dev/null || useradd -u 5000 -g 5000 -d "$MAILDIR_BASE" -s /usr/sbin/nologin vmail
mkdir -p "$MAILDIR_BASE"
chown -R 5000:5000 "$MAILDIR_BASE"
[ -f /etc/postfix/main.cf ] || cp /usr/share/postfix/main.cf.debian /etc/postfix/main.cf
postconf -e 'compatibility_level = 3.6' 'myhostname = mx.bench.example' 'mydomain = bench.example' \
  'myorigin = $myhostname' 'mydestination = $myhostname, localhost' 'inet_interfaces = loopback-only' \
  'inet_protocols = ipv4' 'mynetworks = 127.0.0.0/8' 'relayhost =' \
  'smtp_host_lookup = native' 'smtp_dns_support_level = disabled' 'disable_dns_lookups = yes' \
  'smtpd_peername_lookup = no' 'virtual_mailbox_domains = bench.example' \
  "virtual_mailbox_base = $MAILDIR_BASE" 'virtual_mailbox_maps = static:bench.example/Maildir/' \
  'virtual_uid_maps = static:5000' 'virtual_gid_maps = static:5000' 'virtual_minimum_uid = 100' \
  'default_transport = error:outbound delivery disabled' 'relay_transport = error:outbound delivery disabled' \
  'alias_maps = hash:/etc/aliases' 'alias_database = hash:/etc/aliases' 2>/dev/null
postconf -M# smtp/inet 2>/dev/null || true
postconf -M '127.0.0.1:2525/inet = 127.0.0.1:2525 inet n - n - - smtpd'
[ -f /etc/aliases ] || echo "postmaster: root" > /etc/aliases
newaliases
/usr/lib/postfix/configure-instance.sh - >/dev/null 2>&1 || true
postfix check
postfix status >/dev/null 2>&1 || postfix start >/dev/null 2>&1
echo "$MAILDIR_BASE/bench.example/Maildir"
