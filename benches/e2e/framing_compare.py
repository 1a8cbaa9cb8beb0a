#!/usr/bin/env python3
"""Sends the same raw HTTP/1 bytes through l7inspect and through haproxy, and
prints what each answers and what reached the server behind it.

The cases are those of bins/l7inspect-sidecar/tests/framing.rs (conflicting
Host fields, an absolute-form target that disagrees with Host, malformed
chunked framing, Expect: 100-continue against three kinds of server, an
unreachable server, one that closes without answering, one that answers
garbage). docs/robustness.md quotes the output.

Usage: benches/e2e/framing_compare.py [L7INSPECT_BINARY] [HAPROXY_BINARY]
(defaults: target/debug/l7inspect-sidecar, /usr/sbin/haproxy). Everything
listens on 127.0.0.1; both proxies are stopped (by their PIDs) at the end.
"""

import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

READ_WAIT = 3.0  # seconds a client waits for more bytes before it stops


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Backend:
    """A raw HTTP/1 server that records what it receives, per connection."""

    def __init__(self, mode):
        self.mode = mode
        self.conns = []  # bytearrays

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def reset(self):
        self.conns = []

    async def handle(self, reader, writer):
        seen = bytearray()
        self.conns.append(seen)

        async def read_more():
            data = await reader.read(65536)
            seen.extend(data)
            return data

        buf = bytearray()
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await read_more()
                    if not data:
                        return
                    buf.extend(data)
                end = buf.index(b"\r\n\r\n") + 4
                head = bytes(buf[:end]).lower()
                m = re.search(rb"content-length:\s*(\d+)", head)
                length = int(m.group(1)) if m else 0
                chunked = b"transfer-encoding: chunked" in head
                expects = b"expect: 100-continue" in head
                if self.mode == "close":
                    return
                if self.mode == "garbage":
                    writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
                    await writer.drain()
                    return
                if self.mode == "reject417":
                    writer.write(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
                    while await read_more():
                        pass
                    return
                if self.mode == "continue" and expects:
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    await writer.drain()
                if chunked:
                    while b"\r\n0\r\n\r\n" not in buf[end - 2:]:
                        data = await read_more()
                        if not data:
                            return
                        buf.extend(data)
                    stop = buf.index(b"\r\n0\r\n\r\n", end - 2) + 7
                else:
                    while len(buf) < end + length:
                        data = await read_more()
                        if not data:
                            return
                        buf.extend(data)
                    stop = end + length
                del buf[:stop]
                body = b"got %d" % length
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()


async def read_for(reader, wait):
    """Reads until EOF or `wait` seconds without a byte; (bytes, closed)."""
    out = bytearray()
    while True:
        try:
            data = await asyncio.wait_for(reader.read(65536), wait)
        except asyncio.TimeoutError:
            return bytes(out), False
        except ConnectionError:
            return bytes(out), True
        if not data:
            return bytes(out), True
        out.extend(data)


async def plain(port, req, wait):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(req)
    await writer.drain()
    resp, closed = await read_for(reader, wait)
    writer.close()
    return resp, closed, None


async def expect(port, head, body):
    """Sends the head, waits for a first response head, sends the body if it
    was a 100; returns everything, whether the proxy closed, and how long the
    first response head took."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    writer.write(head)
    await writer.drain()
    got = bytearray()
    while b"\r\n\r\n" not in got:
        try:
            data = await asyncio.wait_for(reader.read(65536), 5)
        except asyncio.TimeoutError:
            break
        if not data:
            break
        got.extend(data)
    first = time.monotonic() - start
    if got.startswith(b"HTTP/1.1 100"):
        writer.write(body)
        await writer.drain()
    rest, closed = await read_for(reader, READ_WAIT)
    writer.close()
    return bytes(got) + rest, closed, first


HOST2 = b"GET /a HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"
HOST_SAME = b"GET /a HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n"
ABSOLUTE = b"GET http://a.example/a HTTP/1.1\r\nHost: b.example\r\n\r\n"
CHUNKED = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
EXPECT = b"POST /expect HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
GET = b"GET /fail HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"

CASES = [
    # (name, backend mode, kind, bytes)
    ("two Host fields, different values", "answer", "plain", HOST2),
    ("two Host fields, same value", "answer", "plain", HOST_SAME),
    ("absolute-form target, other Host", "answer", "plain", ABSOLUTE),
    ("chunk size not hex", "answer", "plain", CHUNKED + b"zz\r\nhello\r\n0\r\n\r\n"),
    ("no CRLF after chunk data", "answer", "plain", CHUNKED + b"5\r\nhelloXX0\r\n\r\n"),
    ("chunk size overflows", "answer", "plain", CHUNKED + b"fffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
    ("Expect, server sends 100", "continue", "expect", EXPECT),
    ("Expect, server answers 417 first", "reject417", "expect", EXPECT),
    ("Expect, server ignores it", "answer", "expect", EXPECT),
    ("server refuses connections", "refused", "plain", GET),
    ("server closes without answering", "close", "plain", GET),
    ("server answers garbage", "garbage", "plain", GET),
]


def summary(resp, closed, first):
    text = resp.decode("latin-1")
    statuses = re.findall(r"HTTP/1\.1 (\d{3}[^\r\n]*)", text)
    body = text.split("\r\n\r\n")[-1].strip().replace("\n", " ")[:70]
    s = " then ".join(statuses) or "(nothing)"
    if body:
        s += f' / body "{body}"'
    s += " / closed" if closed else " / left open"
    if first is not None:
        s += f" / first answer after {first * 1000:.0f} ms"
    return s


def received(backend):
    total = sum(len(c) for c in backend.conns)
    if total == 0:
        return "nothing"
    last = bytes(backend.conns[-1])
    head, _, body = last.partition(b"\r\n\r\n")
    expects = head.lower().count(b"expect: 100-continue")
    parts = [f"{total} bytes"]
    if expects:
        parts.append(f"{expects}x Expect")
    if b"transfer-encoding: chunked" in head.lower():
        whole = body.endswith(b"\r\n0\r\n\r\n") or body == b"0\r\n\r\n"
        parts.append("last chunk" if whole else f"body {body!r}, no last chunk")
    elif body:
        parts.append(f"body {body!r}")
    else:
        parts.append("no body")
    return ", ".join(parts)


async def main():
    l7 = sys.argv[1] if len(sys.argv) > 1 else "target/debug/l7inspect-sidecar"
    haproxy = sys.argv[2] if len(sys.argv) > 2 else "/usr/sbin/haproxy"
    backends = {m: Backend(m) for m in ["answer", "continue", "reject417", "close", "garbage"]}
    for b in backends.values():
        await b.start()
    refused_port = free_port()  # nothing listens there
    targets = {m: b.port for m, b in backends.items()}
    targets["refused"] = refused_port

    l7_ports = {m: free_port() for m in targets}
    ha_ports = {m: free_port() for m in targets}
    procs = []
    forwards = ",".join(f"127.0.0.1:{l7_ports[m]}=127.0.0.1:{targets[m]}" for m in targets)
    procs.append(subprocess.Popen(
        [l7, "--no-transparent", "--admin-listen", f"127.0.0.1:{free_port()}",
         "--inbound-forward", forwards],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    cfg = tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False)
    cfg.write("global\n    nbthread 1\ndefaults\n    mode http\n    option http-keep-alive\n"
              "    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n")
    for m in targets:
        cfg.write(f"frontend f_{m}\n    bind 127.0.0.1:{ha_ports[m]}\n    default_backend b_{m}\n"
                  f"backend b_{m}\n    server s1 127.0.0.1:{targets[m]}\n")
    cfg.close()
    procs.append(subprocess.Popen([haproxy, "-f", cfg.name, "-db"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        for ports in (l7_ports, ha_ports):
            for port in ports.values():
                for _ in range(100):
                    try:
                        socket.create_connection(("127.0.0.1", port)).close()
                        break
                    except OSError:
                        await asyncio.sleep(0.05)
        for name, mode, kind, req in CASES:
            print(f"## {name}")
            for proxy, ports in (("l7inspect", l7_ports), ("haproxy", ha_ports)):
                backend = backends.get(mode)
                if backend:
                    backend.reset()
                if kind == "plain":
                    # haproxy retries a refused connect (1 s apart) before its 503.
                    wait = 10.0 if mode == "refused" else READ_WAIT
                    out = await plain(ports[mode], req, wait)
                else:
                    out = await expect(ports[mode], req, b"hello")
                await asyncio.sleep(0.2)  # let the backend record what came
                seen = received(backend) if backend else "-"
                print(f"  {proxy:9}: {summary(*out)}; server got: {seen}")
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        os.unlink(cfg.name)


if __name__ == "__main__":
    asyncio.run(main())
