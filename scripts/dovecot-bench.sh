#!/bin/sh
# Installs and configures Dovecot 2.3 (Debian) as the IMAP/POP3 reader `make bench` compares the
# intranet mail server with, the "tuned" way ../shared/anchors.md describes (high-performance login
# processes, reused mail processes), but with STARTTLS and logins refused before it, exactly as the
# fabric runs: both sides pay for TLS. Idempotent.
#
# usage: dovecot-bench.sh DIR CERT KEY USERS MESSAGES MESSAGE_FILE
#   DIR           scratch folder (config, run dir, passwd-file, Maildirs)
#   CERT KEY      PEM certificate and key the server presents (the bench passes a fabric node's)
#   USERS         how many mailboxes: bench00@acme.example ... (password "bench-password")
#   MESSAGES      messages per mailbox, each a copy of MESSAGE_FILE
# Listens on 127.0.0.30: IMAP 1143, POP3 1110. Prints the master's pid.
set -eu
DIR=$1 CERT=$2 KEY=$3 USERS=$4 MESSAGES=$5 MESSAGE_FILE=$6
if ! command -v dovecot >/dev/null 2>&1 || [ ! -x /usr/lib/dovecot/imap ] || [ ! -x /usr/lib/dovecot/pop3 ]; then
    (apt-get update -qq || true) >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dovecot-imapd dovecot-pop3d >/dev/null
fi
getent group vmail >/dev/null || groupadd -g 5000 vmail
getent passwd vmail >/dev/null || useradd -u 5000 -g 5000 -d /nonexistent -s /usr/sbin/nologin vmail
mkdir -p "$DIR/run" "$DIR/state" "$DIR/mail"
cp "$CERT" "$DIR/cert.pem"; cp "$KEY" "$DIR/key.pem"; chmod 600 "$DIR/key.pem"
: > "$DIR/passwd"
i=0
while [ "$i" -lt "$USERS" ]; do
    user=$(printf 'bench%02d' "$i")
    echo "$user@acme.example:{PLAIN}bench-password" >> "$DIR/passwd"
    md="$DIR/mail/acme.example/$user/Maildir"
    if [ ! -d "$md/cur" ]; then
        mkdir -p "$md/cur" "$md/new" "$md/tmp"
        n=0
        while [ "$n" -lt "$MESSAGES" ]; do
            cp "$MESSAGE_FILE" "$md/cur/1700000000.M${n}P1.bench,S=$(wc -c < "$MESSAGE_FILE"):2,"
            n=$((n + 1))
        done
    fi
    i=$((i + 1))
done
chown -R 5000:5000 "$DIR/mail"
cat > "$DIR/dovecot.conf" <<CONF
base_dir = $DIR/run
state_dir = $DIR/state
log_path = $DIR/dovecot.log
protocols = imap pop3
listen = 127.0.0.30
ssl = yes
ssl_cert = <$DIR/cert.pem
ssl_key = <$DIR/key.pem
disable_plaintext_auth = yes
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
first_valid_uid = 100
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $DIR/passwd
}
userdb {
  driver = static
  args = uid=5000 gid=5000 home=$DIR/mail/%d/%n
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.30
    port = 1143
  }
  inet_listener imaps {
    port = 0
  }
  service_count = 0
  process_min_avail = 2
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.30
    port = 1110
  }
  inet_listener pop3s {
    port = 0
  }
  service_count = 0
  process_min_avail = 2
}
service imap {
  service_count = 100
}
service auth {
  client_limit = 2500
}
service pop3 {
  service_count = 100
}
pop3_uidl_format = %08Xu%08Xv
CONF
# One bench Dovecot at a time: stop the one an earlier (interrupted) run left behind.
PIDFILE=/var/tmp/fabric-bench-dovecot.pid
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    kill "$(cat "$PIDFILE")"; sleep 1
fi
dovecot -c "$DIR/dovecot.conf" 2>"$DIR/start.err" || { cat "$DIR/start.err" >&2; exit 1; }
for _ in 1 2 3 4 5 6 7 8 9 10; do
    [ -f "$DIR/run/master.pid" ] && break
    sleep 0.2
done
cp "$DIR/run/master.pid" "$PIDFILE"
cat "$DIR/run/master.pid"
