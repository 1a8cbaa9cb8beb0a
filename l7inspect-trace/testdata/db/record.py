#!/usr/bin/env python3
"""Records the bytes of database sessions through a relay, for parser tests.

Usage: record.py LISTEN_PORT TARGET_HOST TARGET_PORT OUT_PREFIX

Listens on 127.0.0.1:LISTEN_PORT, prints READY, and relays each accepted
connection to TARGET_HOST:TARGET_PORT. Connection N (from 1) is written to
OUT_PREFIX.N.bin when it ends, as a list of chunks in the order the relay
passed them:

    direction (1 byte: b'C' client to server, b'S' server to client)
    length    (u32, big-endian)
    bytes     (length bytes)

One chunk per recv(), so the split points are the real ones. The relay is
single-threaded (select), so the order of chunks between directions is the
order the relay saw them. Stops after 60 s without a new connection.
"""
import select
import socket
import struct
import sys


def relay(client, target, out):
    upstream = socket.create_connection(target)
    chunks = []
    peers = {client: (upstream, b"C"), upstream: (client, b"S")}
    open_ = {client, upstream}
    while open_:
        readable, _, _ = select.select(list(open_), [], [], 30)
        if not readable:
            break
        for sock in readable:
            other, direction = peers[sock]
            data = sock.recv(65536)
            if not data:
                open_.discard(sock)
                try:
                    other.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                continue
            chunks.append(direction + struct.pack(">I", len(data)) + data)
            other.sendall(data)
    client.close()
    upstream.close()
    with open(out, "wb") as f:
        f.write(b"".join(chunks))


def main():
    port, host, tport, prefix = sys.argv[1:5]
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", int(port)))
    srv.listen(8)
    srv.settimeout(60)
    print("READY", flush=True)
    n = 0
    while True:
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            break
        n += 1
        relay(conn, (host, int(tport)), f"{prefix}.{n}.bin")
        print(f"wrote {prefix}.{n}.bin", flush=True)


if __name__ == "__main__":
    main()
