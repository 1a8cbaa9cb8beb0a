"""What soak.py and attacks.py share: run.py's process and /proc helpers
(imported from benches/e2e/run.py, not copied), the binaries, a private
network namespace, a once-a-second sampler of the proxy's memory,
descriptors and CPU, raw HTTP/2 frames for hostile clients, and tables.

Standard library only. Every process is started through run.py's `start`
and stopped by PID (run.py's `stop_all`, registered at exit and on
SIGINT/SIGTERM).
"""

import atexit
import datetime
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "benches", "e2e"))
import run as e2e  # noqa: E402  (benches/e2e/run.py: start, stop, /proc readings)

BODY = e2e.BODY  # the nginx backend's 17-byte answer
NETNS_ENV = "L7ROBUST_IN_NETNS"


def log(tag, *a):
    print(f"[{tag}]", *a, file=sys.stderr, flush=True)


# ------------------------------------------------------------ environment


def bin_dir(args):
    """Where the release binaries are: --bin-dir, else $CARGO_TARGET_DIR/release,
    else the repository's target/release."""
    if args.bin_dir:
        return os.path.abspath(args.bin_dir)
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    return os.path.join(target, "release")


def build(args, tag):
    """cargo build --release of the sidecar and l7bench, unless --no-build
    (or inside the namespace, where the parent has built them)."""
    if args.no_build or os.environ.get(NETNS_ENV) == "1":
        return
    if args.bin_dir:
        return  # given binaries are used as they are
    log(tag, "building the release sidecar and l7bench (--no-build to skip)")
    for cmd in (["cargo", "build", "--release", "-q", "-p", "l7inspect-sidecar", "--bin", "l7inspect-sidecar"],
                ["cargo", "build", "--release", "-q", "-p", "l7inspect-benches", "--bin", "l7bench"]):
        subprocess.run(cmd, cwd=REPO, check=True)


def binaries(args):
    d = bin_dir(args)
    out = {"sidecar": os.path.join(d, "l7inspect-sidecar"), "l7bench": os.path.join(d, "l7bench")}
    for name, path in out.items():
        if not os.access(path, os.X_OK):
            sys.exit(f"FAIL: {name} binary not found at {path} (build it, or pass --bin-dir)")
    return out


def need_tools(tools, tag):
    """tool -> Debian package; installs the missing ones with apt-get, as
    run.py and .ci/run do."""
    missing = sorted({pkg for tool, pkg in tools.items() if shutil.which(tool) is None})
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    log(tag, "installing", " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(sudo + ["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-q", "--no-install-recommends"] + missing,
                   check=True, env=env)


def enter_netns(mode, script, tag):
    """Re-run `script` in a private network namespace (unshare -n, only
    loopback), as run.py does: no other traffic on its loopback, no port
    clash, and nstat's counters are this run's alone. mode: auto|yes|no."""
    if os.environ.get(NETNS_ENV) == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return
    if mode == "no":
        return
    ok = shutil.which("unshare") and subprocess.run(
        ["unshare", "-n", "true"], capture_output=True).returncode == 0
    if not ok:
        if mode == "yes":
            sys.exit("FAIL: --netns yes: `unshare -n` failed (not root?)")
        log(tag, "no private network namespace (unshare -n failed; not root?): using the host's loopback")
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[NETNS_ENV] = "1"
    argv = [a for a in sys.argv[1:]]
    os.execvp("unshare", ["unshare", "-n", "--", sys.executable, os.path.abspath(script)] + argv)


def prepare(tag, nofile=16384):
    """Descriptors for our own many sockets, processes stopped at exit, a
    work directory (removed at exit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = nofile if hard == resource.RLIM_INFINITY else min(hard, nofile)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    tmp = tempfile.mkdtemp(prefix=f"l7{tag}-")
    os.chmod(tmp, 0o755)  # nginx workers run as nobody
    # atexit runs last in, first out: the processes are stopped, then their
    # directory removed.
    atexit.register(shutil.rmtree, tmp, True)
    atexit.register(e2e.stop_all)
    signal.signal(signal.SIGTERM, e2e.on_signal)
    signal.signal(signal.SIGINT, e2e.on_signal)
    return tmp


def machine():
    m = e2e.machine()
    m["load_average"] = open("/proc/loadavg").read().split()[:3]
    return m


def now_utc():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def ports_free(ports):
    busy = [p for p in ports if not e2e.port_free(p)]
    if busy:
        sys.exit(f"FAIL: ports in use on 127.0.0.1: {busy} (another run? try --port-base)")


# ------------------------------------------------------------ backends


def start_nginx_backend(tmp, h1, h2, cpu):
    cfg = e2e.render("nginx-backend.conf", os.path.join(tmp, "nginx-backend.conf"),
                     DIR=tmp, H1_PORT=h1, H2_PORT=h2)
    p = e2e.start(["nginx", "-p", tmp, "-c", cfg, "-g", "daemon off;"], cpu, "nginx-backend", tmp)
    e2e.wait_port(h1, p)
    e2e.wait_port(h2, p)
    return p


def start_redis(tmp, port, cpu):
    p = e2e.start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", tmp, "--protected-mode", "no"], cpu, "redis-server", tmp)
    e2e.wait_port(port, p)
    return p


def sidecar_base(bins, admin, trace, otlp_port=None):
    """The sidecar's explicit-forward command line (no transparent
    listeners), as run.py's: tracing off, ring (every request sampled, no
    exporter) or otlp (every request exported over OTLP/HTTP)."""
    cmd = [bins["sidecar"], "--no-transparent", "--admin-listen", f"127.0.0.1:{admin}",
           "--log-level", "warn", "--service-name", "robustness"]
    if trace == "off":
        cmd += ["--sample-ratio", "0"]
    elif trace == "ring":
        cmd += ["--sample-ratio", "1.0"]
    elif trace == "otlp":
        cmd += ["--sample-ratio", "1.0", "--otlp-protocol", "http/protobuf",
                "--otlp-endpoint", f"http://127.0.0.1:{otlp_port}/v1/traces"]
    else:
        raise ValueError(trace)
    return cmd


def http_get(port, path="/", timeout=5.0, host="bench.local"):
    """(status or error string, body) of one GET on a new connection."""
    import http.client
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("GET", path, headers={"Host": host})
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, body
    except Exception as e:  # noqa: BLE001 (any failure is the answer)
        return f"{type(e).__name__}: {e}"[:120], b""


# ------------------------------------------------------------ sampling


class Sampler(threading.Thread):
    """Every `interval` s: (t, RSS KiB, open descriptors, CPU s) of the
    PIDs and their descendants, read from /proc (run.py's readers)."""

    def __init__(self, pids, interval=1.0):
        super().__init__(daemon=True)
        self.pids, self.interval = pids, interval
        self.samples = []
        self.t0 = time.monotonic()
        self.halt = threading.Event()

    def read(self):
        return (round(time.monotonic() - self.t0, 2), e2e.mem_kib(self.pids, "VmRSS"),
                e2e.open_fds(self.pids), e2e.cpu_seconds(self.pids))

    def run(self):
        while not self.halt.is_set():
            self.samples.append(self.read())
            self.halt.wait(self.interval)

    def stop(self):
        self.halt.set()
        self.join(5)

    def window(self, t_from, t_to):
        return [s for s in self.samples if t_from <= s[0] <= t_to]

    def now(self):
        return time.monotonic() - self.t0


def cpu_pct(samples):
    """CPU % of one core between the first and the last sample."""
    if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
        return None
    return 100.0 * (samples[-1][3] - samples[0][3]) / (samples[-1][0] - samples[0][0])


def summary(samples, idx):
    vals = [s[idx] for s in samples]
    if not vals:
        return None
    return {"first": vals[0], "min": min(vals), "median": statistics.median(vals), "max": max(vals),
            "last": vals[-1]}


def slope_per_min(samples, idx):
    """Least-squares slope of a sampled series, per minute."""
    if len(samples) < 3:
        return None
    mt = statistics.fmean(s[0] for s in samples)
    mv = statistics.fmean(s[idx] for s in samples)
    den = sum((s[0] - mt) ** 2 for s in samples)
    return sum((s[0] - mt) * (s[idx] - mv) for s in samples) / den * 60 if den else None


def mib(kib):
    return None if kib is None else round(kib / 1024, 1)


# ------------------------------------------------------------ HTTP/2 frames

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
H2_ERRORS = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
             4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM",
             8: "CANCEL", 9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR", 11: "ENHANCE_YOUR_CALM",
             12: "INADEQUATE_SECURITY", 13: "HTTP_1_1_REQUIRED"}


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def hpack_int(value, prefix_bits, first=0):
    """An HPACK integer with an N-bit prefix (RFC 7541 5.1); `first`: the
    pattern bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_str(s):
    """A string literal without Huffman coding."""
    return hpack_int(len(s), 7) + s


def literal(name, value, index_name=0, incremental=False):
    """A header field literal: with incremental indexing (adds an entry to
    the dynamic table) or without; by indexed name or new name."""
    if incremental:
        head = hpack_int(index_name, 6, 0x40)
    else:
        head = hpack_int(index_name, 4, 0x00)
    return head + (b"" if index_name else hpack_str(name)) + hpack_str(value)


def request_block(authority=b"bench.local", path=b"/"):
    """:method GET, :scheme http, :path, :authority (static-table names)."""
    block = b"\x82\x86" + (b"\x84" if path == b"/" else literal(b"", path, index_name=4))
    return block + literal(b"", authority, index_name=1)


# HPACK's Huffman codes of the ten digits (RFC 7541 Appendix B): a :status
# value comes Huffman-coded from most encoders (h2's, nghttp2's).
HUFFMAN_DIGITS = {"00000": "0", "00001": "1", "00010": "2", "011001": "3", "011010": "4", "011011": "5",
                  "011100": "6", "011101": "7", "011110": "8", "011111": "9"}


def huffman_digits(data):
    bits = "".join(f"{b:08b}" for b in data)
    out, code = "", ""
    for bit in bits:
        code += bit
        if code in HUFFMAN_DIGITS:
            out += HUFFMAN_DIGITS[code]
            code = ""
        elif len(code) > 6 and "0" in code:  # 7 one-bits: padding (EOS's prefix)
            return None
    return out if set(code) <= {"1"} else None


def status_of(block):
    """The :status of a response header block, when it is in the static
    table or a literal with its name indexed (what servers send)."""
    statics = {0x88: 200, 0x89: 204, 0x8a: 206, 0x8b: 304, 0x8c: 400, 0x8d: 404, 0x8e: 500}
    if not block:
        return None
    if block[0] in statics:
        return statics[block[0]]
    # Literal with indexed name 8..14 (:status): 0x48 (incremental),
    # 0x08 (without indexing), 0x18 (never indexed).
    b0 = block[0]
    if (b0 & 0xC0 == 0x40 and 8 <= b0 & 0x3F <= 14) or (b0 & 0xE0 == 0 and 8 <= b0 & 0x0F <= 14):
        if len(block) >= 5 and block[1] == 3:
            try:
                return int(block[2:5])
            except ValueError:
                return None
        if len(block) >= 2 and block[1] & 0x80:  # Huffman-coded
            n = block[1] & 0x7F
            digits = huffman_digits(block[2:2 + n])
            return int(digits) if digits and len(digits) == 3 else None
    return None


class H2Reader:
    """Frames the server sends on a raw HTTP/2 connection: GOAWAY (its error
    code and last stream), resets by error code, response statuses."""

    def __init__(self):
        self.buf = b""
        self.goaway = None
        self.resets = {}
        self.statuses = {}
        self.indexed_status = None
        self.frames = 0

    def feed(self, data):
        self.buf += data
        while len(self.buf) >= 9:
            n = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + n:
                break
            ftype, payload = self.buf[3], self.buf[9:9 + n]
            self.buf = self.buf[9 + n:]
            self.frames += 1
            if ftype == GOAWAY and len(payload) >= 8:
                code = int.from_bytes(payload[4:8], "big")
                self.goaway = {"error": H2_ERRORS.get(code, code),
                               "last_stream": int.from_bytes(payload[:4], "big") & 0x7FFFFFFF}
            elif ftype == RST_STREAM and len(payload) >= 4:
                name = H2_ERRORS.get(int.from_bytes(payload[:4], "big"), "?")
                self.resets[name] = self.resets.get(name, 0) + 1
            elif ftype == HEADERS:
                st = status_of(payload)
                if st is not None and payload[:1] and payload[0] & 0xC0 == 0x40:
                    self.indexed_status = st  # a literal the encoder added to its table
                elif st is None and payload[:1] and payload[0] >= 0x80 | 62 and self.indexed_status:
                    # An index into the encoder's dynamic table: servers
                    # answering the same status again refer to the literal
                    # they added (h2 does); counted as that status, marked.
                    st = f"{self.indexed_status} (by HPACK index)"
                self.statuses[st] = self.statuses.get(st, 0) + 1

    def answer(self, counts=True):
        parts = []

        def items(d):
            return ", ".join(f"{k}×{v}" if counts else str(k) for k, v in sorted(d.items(), key=str))
        if self.statuses:
            parts.append("HEADERS " + items(self.statuses))
        if self.resets:
            parts.append("RST_STREAM " + items(self.resets))
        if self.goaway:
            parts.append(f"GOAWAY {self.goaway['error']}")
        return "; ".join(parts) or "no frame"


def drain(sock, reader=None, until=0.0, limit=1 << 20):
    """Read what the peer sends until EOF, a reset, `until` (monotonic) or
    `limit` bytes; (bytes read, how it ended: "closed", "reset", "still
    open" at `until`, "open" at `limit`)."""
    got = b""
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return got, "still open"
        sock.settimeout(left)
        try:
            # Without a reader, no more than `limit`: what is left stays in
            # the socket for the next read.
            chunk = sock.recv(65536 if reader is not None else min(65536, limit - len(got)))
        except socket.timeout:
            return got, "still open"
        except ConnectionResetError:
            return got, "reset"
        except OSError as e:
            return got, type(e).__name__
        if not chunk:
            return got, "closed"
        if reader is not None:
            reader.feed(chunk)
        got += chunk[:limit - len(got)]
        if len(got) >= limit:
            return got, "open"


def first_line(data):
    if not data:
        return None
    return data.split(b"\r\n", 1)[0].decode("latin-1")[:60]


# ------------------------------------------------------------ output


def table(hdr, rows):
    return e2e.plain(hdr, rows)


def markdown(hdr, rows):
    return e2e.markdown(hdr, rows)


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, default=str)
