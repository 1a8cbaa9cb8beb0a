#!/usr/bin/env python3
"""Record a database session's bytes, both ways, through a small TCP relay.

    record.py --listen 127.0.0.1:0 --target 127.0.0.1:5432 --out postgres_x.bin [--count N]

Prints the port it listens on, relays each accepted connection to the
target unchanged, and writes connection n's bytes to OUT (n = 1) or to
OUT with `.n` before its extension (n > 1), as frames in the order they
passed:

    direction (1 byte: b'C' client to server, b'S' server to client)
    length    (4 bytes, big-endian)
    bytes     (length bytes, as one read returned them)

Exits after COUNT connections have closed (default 1). The parser's tests
replay the frames (l7inspect-trace/src/db/postgres.rs, `frames`).
"""

import argparse
import os
import selectors
import socket
import struct
import sys
import threading


def relay(client, target, path):
    upstream = socket.create_connection(target)
    sel = selectors.DefaultSelector()
    sel.register(client, selectors.EVENT_READ, (b"C", upstream))
    sel.register(upstream, selectors.EVENT_READ, (b"S", client))
    open_sides = 2
    with open(path, "wb") as out:
        while open_sides:
            for key, _ in sel.select():
                direction, peer = key.data
                try:
                    data = key.fileobj.recv(65536)
                except ConnectionResetError:
                    data = b""  # a reset ends the side as a close does
                if not data:
                    sel.unregister(key.fileobj)
                    open_sides -= 1
                    try:
                        peer.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    continue
                out.write(direction + struct.pack(">I", len(data)) + data)
                peer.sendall(data)
    client.close()
    upstream.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--target", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=1)
    args = ap.parse_args()
    host, port = args.listen.rsplit(":", 1)
    thost, tport = args.target.rsplit(":", 1)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, int(port)))
    listener.listen()
    print(listener.getsockname()[1], flush=True)
    base, ext = os.path.splitext(args.out)
    threads = []
    for n in range(1, args.count + 1):
        client, _ = listener.accept()
        path = args.out if n == 1 else f"{base}.{n}{ext}"
        t = threading.Thread(target=relay, args=(client, (thost, int(tport)), path))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
