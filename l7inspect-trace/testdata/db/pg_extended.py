#!/usr/bin/env python3
"""A tiny PostgreSQL client speaking the extended protocol message by
message, for the cases libpq's clients do not produce on their own: an
error inside a pipeline (the server skips to Sync), a named portal read in
pieces (PortalSuspended), an empty query, Close, and a simple query after
all that.

    pg_extended.py HOST PORT USER DATABASE

Each step sends its messages in one write, then reads until ReadyForQuery
for every Sync it sent. Made for postgres_extended_errors.bin (README.md).
"""

import socket
import struct
import sys


def msg(kind, body=b""):
    return kind + struct.pack(">I", len(body) + 4) + body


def cstr(s):
    return s.encode() + b"\0"


def parse(name, query):
    return msg(b"P", cstr(name) + cstr(query) + struct.pack(">h", 0))


def bind(portal, statement, params=()):
    body = cstr(portal) + cstr(statement) + struct.pack(">h", 0)
    body += struct.pack(">h", len(params))
    for p in params:
        body += struct.pack(">i", len(p)) + p
    return msg(b"B", body + struct.pack(">h", 0))


def describe(kind, name):
    return msg(b"D", kind + cstr(name))


def execute(portal, max_rows=0):
    return msg(b"E", cstr(portal) + struct.pack(">i", max_rows))


def close(kind, name):
    return msg(b"C", kind + cstr(name))


SYNC = msg(b"S")


def read_until_ready(sock, count):
    buf = b""
    seen = 0
    while seen < count:
        while len(buf) < 5 or len(buf) < 1 + struct.unpack(">I", buf[1:5])[0]:
            data = sock.recv(65536)
            if not data:
                raise SystemExit("server closed")
            buf += data
        n = 1 + struct.unpack(">I", buf[1:5])[0]
        kind, buf = buf[:1], buf[n:]
        if kind == b"Z":
            seen += 1
    assert not buf, "bytes after ReadyForQuery"


def main():
    host, port, user, database = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    sock = socket.create_connection((host, port))
    params = cstr("user") + cstr(user) + cstr("database") + cstr(database) + b"\0"
    startup = struct.pack(">I", 196608) + params
    sock.sendall(struct.pack(">I", len(startup) + 4) + startup)
    read_until_ready(sock, 1)

    steps = [
        # A named statement, prepared alone (no execution: no span).
        [parse("s_items", "SELECT g FROM generate_series(1, 5) AS g WHERE g > $1"), SYNC],
        # A pipeline: an execution of it, a failing one (42P01), one the
        # server skips after the error, then Sync; then a good one.
        [
            bind("", "s_items", [b"2"]), execute(""),
            parse("", "SELECT * FROM missing_table"), bind("", ""), execute(""),
            parse("", "DELETE FROM nothing_here"), bind("", ""), execute(""),
            SYNC,
            bind("", "s_items", [b"0"]), execute(""), SYNC,
        ],
        # A named portal read two rows at a time (PortalSuspended), in a
        # transaction so that the portal lives across Syncs.
        [parse("", "BEGIN"), bind("", ""), execute(""), SYNC],
        [bind("cur", "s_items", [b"0"]), describe(b"P", "cur"), execute("cur", 2), SYNC],
        [execute("cur", 2), SYNC],
        [execute("cur", 2), SYNC],
        [close(b"P", "cur"), parse("", "COMMIT"), bind("", ""), execute(""), SYNC],
        # An empty query, and a statement that fails at Parse (42601).
        [parse("", ""), bind("", ""), execute(""), SYNC],
        [parse("", "SELEC 1"), bind("", ""), execute(""), SYNC],
        # Close the named statement; a simple query after it all.
        [close(b"S", "s_items"), SYNC],
        [msg(b"Q", cstr("SELECT 42"))],
    ]
    for step in steps:
        sock.sendall(b"".join(step))
        syncs = sum(1 for m in step if m[:1] in (b"S", b"Q"))
        read_until_ready(sock, syncs)
    sock.sendall(msg(b"X"))
    sock.close()


if __name__ == "__main__":
    main()
