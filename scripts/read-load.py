#!/usr/bin/env python3
"""Read load for `make bench`: Python's imaplib and poplib (clients nobody here wrote) in worker
processes against an IMAP/POP3 server, for a fixed time. Every session goes through STARTTLS/STLS
and logs in; the server is the fabric's intranet mail server or Dovecot, set up alike.

usage: read-load.py MODE HOST PORT --users N --messages M --workers W --seconds S
MODE: imap-login | imap-fetch | imap-list | pop3-retr
Prints one JSON line: {"mode", "sessions", "messages", "bytes", "errors", "seconds", "first_error"}.
A session that returns fewer than M messages, or a message of the wrong size, counts as an error.
"""
import argparse
import imaplib
import json
import multiprocessing
import poplib
import re
import ssl
import time

PASSWORD = "bench-password"
SIZE_RE = re.compile(rb"RFC822\.SIZE (\d+)")


def context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def imap_session(mode, host, port, user, expect, ctx):
    c = imaplib.IMAP4(host, port)
    try:
        c.starttls(ssl_context=ctx)
        c.login(user, PASSWORD)
        if mode == "imap-login":
            return 0, 0
        typ, data = c.select("INBOX", readonly=True)
        if typ != "OK":
            raise RuntimeError(f"SELECT {typ} {data}")
        if mode == "imap-fetch":
            typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[])")
        else:
            typ, data = c.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE)")
        if typ != "OK":
            raise RuntimeError(f"FETCH {typ}")
        if mode == "imap-fetch":
            bodies = [d[1] for d in data if isinstance(d, tuple)]
            n, size = len(bodies), sum(len(b) for b in bodies)
        else:
            items = [d if isinstance(d, bytes) else d[0] for d in data if d != b")"]
            n = sum(1 for i in items if SIZE_RE.search(i))
            size = 0
        if n != expect:
            raise RuntimeError(f"{mode}: {n} messages, expected {expect}")
        return n, size
    finally:
        try:
            c.logout()
        except Exception:
            pass


def pop3_session(host, port, user, expect, ctx):
    p = poplib.POP3(host, port, timeout=30)
    try:
        p.stls(context=ctx)
        p.user(user)
        p.pass_(PASSWORD)
        count, _ = p.stat()
        if count != expect:
            raise RuntimeError(f"pop3: {count} messages, expected {expect}")
        size = 0
        for i in range(1, count + 1):
            _, lines, octets = p.retr(i)
            size += octets
        return count, size
    finally:
        try:
            p.quit()
        except Exception:
            pass


def worker(args, wid, deadline, out):
    ctx = context()
    sessions = messages = nbytes = errors = 0
    first_error = None
    i = 0
    while time.time() < deadline:
        user = f"bench{(wid + i * args.workers) % args.users:02d}@acme.example"
        i += 1
        try:
            if args.mode == "pop3-retr":
                n, b = pop3_session(args.host, args.port, user, args.messages, ctx)
            else:
                n, b = imap_session(args.mode, args.host, args.port, user, args.messages, ctx)
            sessions += 1
            messages += n
            nbytes += b
        except Exception as e:  # counted, and the first one reported
            errors += 1
            if first_error is None:
                first_error = f"{user}: {e!r}"
            time.sleep(0.05)
    out.put((sessions, messages, nbytes, errors, first_error))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["imap-login", "imap-fetch", "imap-list", "pop3-retr"])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--workers", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    out = multiprocessing.Queue()
    start = time.time()
    deadline = start + args.seconds
    procs = [multiprocessing.Process(target=worker, args=(args, w, deadline, out)) for w in range(args.workers)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.time() - start
    first = next((r[4] for r in results if r[4]), None)
    print(json.dumps({
        "mode": args.mode,
        "sessions": sum(r[0] for r in results),
        "messages": sum(r[1] for r in results),
        "bytes": sum(r[2] for r in results),
        "errors": sum(r[3] for r in results),
        "seconds": elapsed,
        "first_error": first,
    }))


if __name__ == "__main__":
    main()
