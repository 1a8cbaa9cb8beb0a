#!/usr/bin/env python3
"""End-to-end benchmark: l7inspect beside direct, haproxy and nginx on loopback.

    python3 benches/e2e/run.py            # full run (about 15 minutes)
    python3 benches/e2e/run.py --duration 3 --soak 0 --only direct,haproxy,l7-1hop-off --tests h1   # smoke test
    python3 benches/e2e/run.py --tests callgrind,syscalls --only haproxy,l7-1hop-off,l7-1hop-ring,l7-1hop-otlp
    python3 benches/e2e/run.py --tests rounds --rounds 5 --only direct,haproxy,l7-1hop-off,l7-1hop-otlp
    python3 benches/e2e/run.py --tests tls    # HTTPS through haproxy-tls, nginx-tls, l7-1hop-tls-off/-otlp (opt-in)

Installs its tools with apt-get when missing (haproxy, nginx and its stream
module, wrk, h2load; valgrind for --tests callgrind), builds the sidecar and
the load tool (cargo build --release -p l7inspect-sidecar; -p
l7inspect-benches --bin l7bench; $CARGO_TARGET_DIR is honoured), then, as
root, re-runs itself in a private network namespace (unshare -n, loopback
only; --netns no to stay on the host's), and for each target in turn:
starts it, measures, stops it. The proxy runs alone on --proxy-cpu (0); the
load, the backends and the OTLP sink on --load-cpu (1). During the
saturating runs the proxy (all its processes together) is held to
--proxy-cpu-limit cores (0.5, as a Kubernetes sidecar with a 500m CPU
limit) by a CFS quota on a cgroup this script creates and removes; the
other runs are unlimited. On 2 vCPUs the load side, with one core, cannot
outrun a proxy with a whole core; it can outrun one held to half of it.

Traffic: HTTP/1.1 keep-alive (open-loop latency, saturating throughput),
HTTP/1.1 with a new connection per request, HTTP/2, gRPC unary, opaque TCP
bulk, time to first byte from a server that speaks first; memory idle, with
idle connections, peak, and over a long run at constant load (--soak).

Every saturating run reports the proxy's CPU over its measured window
(utime+stime of all the target's processes from /proc/PID/stat, as % of its
limit; of one core with --proxy-cpu-limit 0) and CPU µs per request
(absolute). A proxy under 90% of its limit, or one the quota did not
throttle in at least half the CFS periods, was not the bottleneck: its row
is marked `load-bound` (or `contended` when other tasks took 10% of its
core) and left out of the ratios against haproxy. Direct's rate over the
fastest proxy's is reported, with a warning under 1.3x.

Profile modes, not in the default run: --tests callgrind (instructions per
request: the proxy under valgrind --tool=callgrind, warm-up, counters
zeroed, a fixed number of h2load requests, counters dumped) and --tests
syscalls (system calls and context switches per request over a fixed number
of requests, perf stat on the syscall tracepoints, else strace -c), for
haproxy and the one-hop l7inspect targets; --tests rounds (the saturating
HTTP/1.1 run with every selected target running at once, in --rounds rounds
of one run per target, order rotated each round; ratios to haproxy taken
within a round, then their median: drift over a long run lands on both sides
of a ratio, not on one target).

Everything listens on 127.0.0.1; every process it starts is stopped by PID
when it exits (also on Ctrl-C). Results: tables on stdout, and
benches/e2e/results/latest.{json,md}. Standard library only; the gRPC, TCP
sink, banner and OTLP sink servers and the open-loop/gRPC/TCP load are
`l7bench` subcommands (benches/src/bin/l7bench/).
"""

import argparse
import atexit
import contextlib
import datetime
import http.client
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = b"l7inspect e2e ok\n"  # 17 bytes: nginx-backend.conf's `return 200`
BANNER = "SSH-2.0-l7bench\r\n"
STREAM_MODULES = ["/usr/lib/nginx/modules/ngx_stream_module.so",
                  "/usr/share/nginx/modules/ngx_stream_module.so"]

# Port offsets from --port-base (default 18400), all on 127.0.0.1. Each
# target (and the backend) has five: h1, h2 (h2c), grpc (h2c), tcp (opaque
# bulk) and banner (a server that speaks first).
KINDS = ("h1", "h2", "grpc", "tcp", "banner")
OFFSETS = {"otlp": 60}  # the OTLP sink: OTLP/HTTP and OTLP/gRPC on one port
L7_PREFIXES = (("l7off", 10), ("l7tr", 20), ("l7hop", 30), ("l7hop_in", 70),
               ("l7ring", 80), ("l7grpc", 90))
for _prefix, _base in (("backend", 0), ("haproxy", 40), ("nginx", 50)) + L7_PREFIXES:
    for _i, _kind in enumerate(KINDS):
        OFFSETS[f"{_prefix}_{_kind}"] = _base + _i
for _prefix, _base in L7_PREFIXES:
    OFFSETS[f"{_prefix}_admin"] = _base + 9
P = {}  # filled in main() from --port-base

# ---------------------------------------------------------------- processes

CHILDREN = []  # Popen objects this script started; stopped by PID only


def log(*a):
    print("[e2e]", *a, file=sys.stderr, flush=True)


def start(cmd, cpu, name, logdir, env=None, cgroup=None):
    """Start cmd pinned to cpu; cgroup: a CpuLimit whose group the process
    joins before it execs (its threads and children stay in it)."""
    full = ["taskset", "-c", str(cpu)] + cmd  # taskset execs: same PID
    out = open(os.path.join(logdir, name + ".log"), "ab")
    join = cgroup.join if cgroup is not None else None
    p = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, env=env, preexec_fn=join)
    p._e2e_name = name
    CHILDREN.append(p)
    return p


def stop(p, timeout=10):
    if p.poll() is None:
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in CHILDREN:
        CHILDREN.remove(p)


def stop_all():
    for p in list(reversed(CHILDREN)):
        try:
            stop(p, timeout=5)
        except Exception:
            pass


def on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


def wait_port(port, proc, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc._e2e_name} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening after {timeout}s")


def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()

# ----------------------------------------------------------- CPU limit


class CgroupError(Exception):
    pass


class CpuLimit:
    """A cgroup of its own (unique name) that every proxy process is started
    in, with a CFS CPU quota of --proxy-cpu-limit cores switched on only
    around the saturating runs (`with LIMIT.applied():`) and unlimited
    otherwise, as a Kubernetes sidecar with a CPU limit runs. cgroup v1
    (the `cpu` controller: cpu.cfs_quota_us, cpu.cfs_period_us) or v2
    (cpu.max, at the root of the unified hierarchy). Removed at exit."""

    PERIOD_US = 100000  # the kernel's and Kubernetes' default CFS period

    def __init__(self, cores):
        self.cores = cores
        self.version, root = self.find()
        self.path = os.path.join(root, f"l7e2e-{os.getpid()}-{os.urandom(3).hex()}")
        try:
            if self.version == 2:
                self.enable_v2(root)
            os.mkdir(self.path)
            self.set(None)
        except OSError as e:
            self.remove()
            raise CgroupError(f"cannot create a cgroup under {root}: {e.strerror}") from e
        self.on = False

    @staticmethod
    def find():
        """(version, directory to create the group in): the v1 `cpu`
        hierarchy if mounted, else a cgroup2 mount."""
        v1 = v2 = None
        with open("/proc/self/mounts") as f:
            for line in f:
                _dev, mnt, fstype, opts = line.split()[:4]
                if fstype == "cgroup" and "cpu" in opts.split(",") and v1 is None:
                    v1 = mnt
                elif fstype == "cgroup2" and v2 is None:
                    v2 = mnt
        if v1:
            return 1, v1
        if v2 and os.path.exists(os.path.join(v2, "cgroup.controllers")):
            with open(os.path.join(v2, "cgroup.controllers")) as f:
                if "cpu" in f.read().split():
                    return 2, v2
        raise CgroupError("no cgroup with the cpu controller is mounted "
                          "(looked for a v1 `cpu` hierarchy and cgroup2 cpu.max)")

    @staticmethod
    def enable_v2(root):
        path = os.path.join(root, "cgroup.subtree_control")
        with open(path) as f:
            if "cpu" in f.read().split():
                return
        with open(path, "w") as f:
            f.write("+cpu")

    def write(self, name, value):
        with open(os.path.join(self.path, name), "w") as f:
            f.write(value)

    def set(self, cores):
        """Limit the group to `cores` CPUs (None: unlimited)."""
        q = -1 if cores is None else max(1000, round(cores * self.PERIOD_US))
        if self.version == 1:
            self.write("cpu.cfs_period_us", str(self.PERIOD_US))
            self.write("cpu.cfs_quota_us", str(q))
        else:
            self.write("cpu.max", f"{'max' if q < 0 else q} {self.PERIOD_US}")

    def join(self):
        """In a forked child before exec: move this process into the group."""
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    @contextlib.contextmanager
    def applied(self):
        """The quota on for the duration of a saturating run."""
        self.set(self.cores)
        self.on = True
        try:
            yield
        finally:
            self.set(None)
            self.on = False

    def quota(self):
        """The quota in force now, read back from the kernel (cores; None:
        unlimited)."""
        if self.version == 1:
            with open(os.path.join(self.path, "cpu.cfs_quota_us")) as f:
                q = int(f.read())
            with open(os.path.join(self.path, "cpu.cfs_period_us")) as f:
                per = int(f.read())
            return None if q < 0 else q / per
        with open(os.path.join(self.path, "cpu.max")) as f:
            q, per = f.read().split()
        return None if q == "max" else int(q) / int(per)

    def stat(self):
        """(periods, throttled periods, throttled seconds) from cpu.stat."""
        d = {}
        try:
            with open(os.path.join(self.path, "cpu.stat")) as f:
                for line in f:
                    k, v = line.split()
                    d[k] = int(v)
        except OSError:
            return None
        thr = d["throttled_time"] / 1e9 if "throttled_time" in d else d.get("throttled_usec", 0) / 1e6
        return d.get("nr_periods", 0), d.get("nr_throttled", 0), thr

    def remove(self):
        """Remove the group. Every process this script started in it has
        been stopped by then; one still there (an orphaned nginx worker, say)
        can only be one of ours, and is killed by PID."""
        if not os.path.isdir(self.path):
            return
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                pass
            try:
                with open(os.path.join(self.path, "cgroup.procs")) as f:
                    left = [int(x) for x in f.read().split()]
            except OSError:
                left = []
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.1)
        log(f"could not remove the cgroup {self.path}; remove it with rmdir")


LIMIT = None  # a CpuLimit when --proxy-cpu-limit is on


def limited():
    """The proxy's CPU limit around a saturating run (nothing when off)."""
    return LIMIT.applied() if LIMIT else contextlib.nullcontext()

# ----------------------------------------------------------- /proc readings


def tree(pids):
    """The given PIDs and all their descendants (nginx master + worker)."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], list(pids)
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_split(pids):
    """(user, system) CPU seconds of the PIDs and their descendants."""
    user = system = 0
    for p in tree(pids):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])  # utime
            system += int(fields[12])  # stime
        except OSError:
            pass
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pids):
    return sum(cpu_split(pids))


def open_fds(pids):
    total = 0
    for p in tree(pids):
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return total


def mem_kib(pids, key):
    total = 0
    for p in tree(pids):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total

# ----------------------------------------------------------------- traffic


def http_get_ok(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/", headers={"Host": "bench.local"})
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200 or body != BODY:
        raise RuntimeError(f"GET through port {port}: {r.status}, {len(body)} bytes")


def open_idle(port, n):
    """n keep-alive connections, each has done one GET and now sits idle."""
    req = b"GET / HTTP/1.1\r\nHost: bench.local\r\n\r\n"
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), 5)
        s.sendall(req)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed during idle-connection setup")
            buf += chunk
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"(?i)content-length:\s*(\d+)", head)
                if m and len(rest) >= int(m.group(1)):
                    break
        socks.append(s)
    return socks


def load_cmd(cmd):
    return ["taskset", "-c", str(ARGS.load_cpu)] + cmd


def core_ticks():
    """{cpu: (busy, total, tasks)} clock ticks from /proc/stat (busy: all but
    idle and iowait; tasks: user, nice, system and steal, without interrupts)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                vals = [int(v) for v in vals]
                out[int(name[3:])] = (sum(vals) - vals[3] - vals[4], sum(vals),
                                      vals[0] + vals[1] + vals[2] + vals[7])
    return out


def snapshot(pids):
    """(time, proxy CPU s, core ticks, throttling, (user s, system s,
    context switches))."""
    thr = LIMIT.stat() if (LIMIT and pids) else None
    split = cpu_split(pids) if pids else (0.0, 0.0)
    return (time.monotonic(), sum(split), core_ticks(), thr,
            split + (ctx_switches(pids) if pids else 0,))


def sleep_until(t):
    while True:
        left = t - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.5))


# A proxy whose CPU is under this (% of what it may use: its limit, else
# one core) during a saturating run is not the bottleneck: its row is marked
# and left out of the ratios.
CPU_BOUND_PCT = 90.0
# Under a limit, the quota must also have held it: throttled in at least this
# share of the CFS periods of the window (a proxy that wants more than its
# quota is throttled in nearly every one). A proxy near its limit but rarely
# throttled got that CPU from sharing its core with another task (CFS gives
# two busy tasks half each), not from the quota.
THROTTLED_PCT = 50.0
# ... and if it was not the bottleneck while other tasks (or the hypervisor's
# steal) took at least this much of its core, it may have been crowded out
# rather than starved of load.
CONTENDED_OTHER_PCT = 10.0


def window_cpu(s0, s1, pids):
    """Proxy CPU (% of one core), core busy % and, under a CPU limit, the
    limit read back from the kernel and the share of CFS periods in which
    the proxy was throttled, between two snapshots."""
    wall = s1[0] - s0[0]

    def core(c, i=0):
        if c not in s0[2] or c not in s1[2]:
            return None
        b = s1[2][c][i] - s0[2][c][i]
        t = s1[2][c][1] - s0[2][c][1]
        return 100.0 * b / t if t else None
    out = {"cpu_window_s": round(wall, 3), "proxy_core_pct": core(ARGS.proxy_cpu),
           "load_core_pct": core(ARGS.load_cpu)}
    if pids:
        out["proxy_cpu_pct"] = 100.0 * (s1[1] - s0[1]) / wall
        out["proxy_user_pct"] = 100.0 * (s1[4][0] - s0[4][0]) / wall
        out["proxy_sys_pct"] = 100.0 * (s1[4][1] - s0[4][1]) / wall
        out["context_switches_per_s"] = (s1[4][2] - s0[4][2]) / wall
        tasks = core(ARGS.proxy_cpu, 2)
        if tasks is not None:
            out["others_on_proxy_core_pct"] = max(0.0, tasks - out["proxy_cpu_pct"])
        if LIMIT and LIMIT.on:
            out["cpu_limit"] = LIMIT.quota()
        if s0[3] and s1[3]:
            periods = s1[3][0] - s0[3][0]
            if periods:
                out["throttled_periods_pct"] = 100.0 * (s1[3][1] - s0[3][1]) / periods
            out["throttled_s"] = s1[3][2] - s0[3][2]
    return out


def classify(r, rate_key="rps"):
    """Per-request CPU (absolute: CPU time over requests, whatever the
    limit) and whether the proxy was the bottleneck (`bound`): proxy (CPU
    ≥ 90% of its limit, or of a core without one), load-bound (the proxy
    waited for the load side), contended (other tasks took ≥ 10% of its
    core). Under a limit, `proxy` also needs the quota to have throttled it
    in ≥ 50% of the CFS periods."""
    pct = r.get("proxy_cpu_pct")
    if pct is None:
        return r
    rate = r.get(rate_key)
    if rate_key == "rps" and rate:
        r["cpu_us_per_req"] = pct / 100.0 / rate * 1e6
        if "proxy_user_pct" in r:
            r["user_us_per_req"] = r["proxy_user_pct"] / 100.0 / rate * 1e6
            r["sys_us_per_req"] = r["proxy_sys_pct"] / 100.0 / rate * 1e6
            r["context_switches_per_req"] = r["context_switches_per_s"] / rate
    elif rate_key == "gib_per_s" and rate:
        r["cpu_s_per_gib"] = pct / 100.0 / rate
    limit = r.get("cpu_limit")
    r["proxy_cpu_pct_of_limit"] = pct / (limit or 1.0)
    held = not limit or (r.get("throttled_periods_pct") or 0) >= THROTTLED_PCT
    if r["proxy_cpu_pct_of_limit"] >= CPU_BOUND_PCT and held:
        r["bound"] = "proxy"
    elif (r.get("others_on_proxy_core_pct") or 0) >= CONTENDED_OTHER_PCT:
        r["bound"] = "contended"
    else:
        r["bound"] = "load-bound"
    return r


def at_rate(r):
    """A fixed-rate run: the proxy's CPU per request at that rate (every
    proxy serves the same requests per second, so this compares their cost
    whatever the load side can do); saturation does not apply."""
    for k in ("bound", "proxy_cpu_pct_of_limit"):
        r.pop(k, None)
    return r


def run_load(cmd, pids, start, length, timeout):
    """Run a load command on the load CPU. The proxy's CPU is read over the
    tool's measured window (from `start` s after launch for `length` s),
    trimmed by a quarter second at each end so that connection setup and
    teardown are outside it. Returns (stdout, stderr, exit code, CPU dict)."""
    p = subprocess.Popen(load_cmd(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, text=True)
    p._e2e_name = cmd[0]
    CHILDREN.append(p)
    try:
        t = time.monotonic()
        margin = min(0.25, length / 10.0)
        sleep_until(t + start + margin)
        s0 = snapshot(pids)
        sleep_until(t + start + length - margin)
        s1 = snapshot(pids)
        out, err = p.communicate(timeout=timeout)
    finally:
        stop(p)
    return out, err, p.returncode, window_cpu(s0, s1, pids)


def wrk(port, conns, duration, close=False, pids=None):
    """wrk, closed loop at full speed; close: a new connection per request."""
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency",
           "-H", "Host: bench.local", "-s", os.path.join(HERE, "wrk-report.lua")]
    if close:
        cmd += ["-H", "Connection: close"]
    out, err, _, cpu = run_load(cmd + [f"http://127.0.0.1:{port}/"], pids, 0, duration, duration + 60)
    m = re.search(r"^WRKJSON (.*)$", out, re.M)
    if not m:
        raise RuntimeError("wrk: " + out[-500:] + err[-500:])
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r.update(cpu)
    return classify(r)


def h2load(port, conns, streams, duration, logfile, rps_per_conn=0, pids=None, scheme="http", h1=False):
    """h2load for `duration` s after a 1 s warm-up (h2c, or HTTP/1.1 with
    h1; scheme https: over TLS, and the negotiated TLS in the result)."""
    cmd = ["h2load", "-t1", f"-c{conns}", f"-m{streams}", f"-D{duration}",
           "--warm-up-time=1", f"--log-file={logfile}"] + (["--h1"] if h1 else [])
    if rps_per_conn:
        cmd.append(f"--rps={rps_per_conn}")
    out, err, _, cpu = run_load(cmd + [f"{scheme}://127.0.0.1:{port}/"], pids, 1, duration, duration + 60)
    r = h2load_result(out, err, logfile)
    r.update(cpu)
    return classify(r)


def h2load_result(out, err, logfile=None):
    """h2load's counts, rate, TLS session (if any) and, from its log file,
    the latency percentiles of the successful requests."""
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    m2 = re.search(r"finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", out)
    if not m or not m2:
        raise RuntimeError("h2load: " + out[-800:] + err[-500:])
    took = float(m2.group(1)) / {"us": 1e6, "ms": 1e3, "s": 1}[m2.group(2)]
    tls = {k: v.strip() for k, v in re.findall(r"^(TLS Protocol|Cipher|Server Temp Key|Application protocol): (.*)$",
                                                out, re.M)}
    lat = []
    if not logfile:
        return {"requests": int(m.group(4)), "failed": int(m.group(5)) + int(m.group(6)),
                "rps": float(m2.group(3)), "h2load_s": took, **({"tls": tls} if tls else {})}
    with open(logfile) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "200":
                lat.append(int(parts[2]))
    os.unlink(logfile)
    lat.sort()

    def pct(q):
        return lat[min(len(lat) - 1, int(q / 100.0 * len(lat)))] if lat else None
    r = {"requests": int(m.group(4)), "failed": int(m.group(5)) + int(m.group(6)),
         "rps": float(m2.group(3)), "p50_us": pct(50), "p99_us": pct(99),
         "p999_us": pct(99.9)}
    if tls:
        r["tls"] = tls
    return r


def l7bench(args, budget, pids=None, window=None, rate_key="rps"):
    """An l7bench load subcommand on the load CPU; its one JSON line.
    window: (start, length) of its measurement, for the proxy's CPU."""
    start, length = window or (0, 0)
    out, err, rc, cpu = run_load([L7BENCH] + [str(a) for a in args], pids if window else None,
                                 start, length, budget + 60)
    if rc != 0 or not out.strip():
        raise RuntimeError(f"l7bench {args[0]}: exit {rc}: " + err[-500:])
    r = json.loads(out.strip().splitlines()[-1])
    if window:
        r.update(cpu)
        classify(r, rate_key)
    return r

# ----------------------------------------------------------- repetitions


def median_of(runs):
    """Median of each numeric field over the runs; the runs themselves kept."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    for k, v in runs[0].items():
        vals = [r.get(k) for r in runs]
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals):
            out[k] = statistics.median(vals)
    out["runs"] = runs
    return out


def repeated(fn, rate_key="rps"):
    """fn() --repeat times; the medians (`bound` from the median CPU)."""
    out = median_of([fn() for _ in range(ARGS.repeat)])
    if ARGS.repeat > 1 and "proxy_cpu_pct" in out:
        out.pop("bound", None)
        classify(out, rate_key)
    return out

# ----------------------------------------------------------------- targets


def render(template, out, **kw):
    with open(os.path.join(HERE, template)) as f:
        text = f.read()
    for k, v in kw.items():
        text = text.replace("@" + k + "@", str(v))
    with open(out, "w") as f:
        f.write(text)
    return out


def sidecar_cmd(admin, inbound=(), outbound=(), trace="off"):
    """trace: off (--sample-ratio 0), ring (every request sampled, no
    exporter: spans only into the in-memory ring of recent spans),
    otlp-http or otlp-grpc (every request sampled, exported to the sink)."""
    cmd = [SIDECAR, "--no-transparent", "--admin-listen", f"127.0.0.1:{admin}",
           "--log-level", "warn", "--service-name", "e2e-bench"]
    for lp, tp in inbound:
        cmd += ["--inbound-forward", f"127.0.0.1:{lp}=127.0.0.1:{tp}"]
    for lp, tp in outbound:
        cmd += ["--outbound-forward", f"127.0.0.1:{lp}=127.0.0.1:{tp}"]
    if trace == "off":
        # Tracing off: no span is recorded (the trace context is still
        # propagated, as a sidecar at sample ratio 0 does).
        cmd += ["--sample-ratio", "0"]
    elif trace == "ring":
        cmd += ["--sample-ratio", "1.0"]
    elif trace == "otlp-http":
        cmd += ["--sample-ratio", "1.0", "--otlp-protocol", "http/protobuf",
                "--otlp-endpoint", f"http://127.0.0.1:{P['otlp']}/v1/traces"]
    elif trace == "otlp-grpc":
        cmd += ["--sample-ratio", "1.0", "--otlp-protocol", "grpc",
                "--otlp-endpoint", f"http://127.0.0.1:{P['otlp']}"]
    else:
        raise ValueError(trace)
    # --sidecar-args: the same targets with a flag changed (compare two runs).
    return cmd + shlex.split(ARGS.sidecar_args)


def forwards(frm, to):
    """(listen, target) port pairs for every kind of traffic."""
    return [(P[f"{frm}_{k}"], P[f"{to}_{k}"]) for k in KINDS]


def sidecar_env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "L7INSPECT_"))}
    return env


TARGETS = [
    # name, description, port prefix
    ("direct", "the backends, no proxy", "backend"),
    ("haproxy", "haproxy 1 hop, nbthread 1; HTTP mode with keep-alive to the backend (h2 and gRPC: proto h2 both sides); TCP mode for tcp/banner", "haproxy"),
    ("nginx", "nginx 1 hop, 1 worker; upstream keepalive (h2c in, HTTP/1.1 upstream); grpc_pass (h2c both sides); stream module for tcp/banner", "nginx"),
    ("l7-1hop-off", "l7inspect 1 hop, inbound forward, tracing off (--sample-ratio 0: no spans recorded, context still propagated)", "l7off"),
    ("l7-1hop-ring", "l7inspect 1 hop, 100% sampled, no exporter (spans only into the in-memory ring)", "l7ring"),
    ("l7-1hop-otlp", "l7inspect 1 hop, 100% sampled, OTLP/HTTP to a live local sink", "l7tr"),
    ("l7-1hop-otlp-grpc", "l7inspect 1 hop, 100% sampled, OTLP/gRPC to a live local sink", "l7grpc"),
    ("l7-2hop-otlp", "l7inspect 2 hops (outbound forward -> inbound forward), both 100% sampled to OTLP", "l7hop"),
]


# The one-process l7inspect targets: name -> (port prefix, tracing).
L7_ONE_HOP = {"l7-1hop-off": ("l7off", "off"), "l7-1hop-ring": ("l7ring", "ring"),
              "l7-1hop-otlp": ("l7tr", "otlp-http"), "l7-1hop-otlp-grpc": ("l7grpc", "otlp-grpc")}


def start_target(name, tmp, wrap=()):
    """Start a target's processes, in the CPU-limit cgroup if there is one
    (unlimited until a saturating run); return (PIDs to measure, admin
    ports). wrap: a command the proxy runs under (valgrind for callgrind)."""
    c = ARGS.proxy_cpu
    wrap = list(wrap)
    if name == "direct":
        return [], []
    if name == "haproxy":
        kw = {f"{k.upper()}_PORT": P[f"haproxy_{k}"] for k in KINDS}
        kw.update({f"BACKEND_{k.upper()}_PORT": P[f"backend_{k}"] for k in KINDS})
        cfg = render("haproxy.cfg", os.path.join(tmp, "haproxy.cfg"), **kw)
        p = start(wrap + ["haproxy", "-db", "-f", cfg], c, "haproxy", tmp, cgroup=LIMIT)
        return [p], []
    if name == "nginx":
        kw = {f"{k.upper()}_PORT": P[f"nginx_{k}"] for k in KINDS}
        kw.update({f"BACKEND_{k.upper()}_PORT": P[f"backend_{k}"] for k in KINDS})
        cfg = render("nginx-proxy.conf", os.path.join(tmp, "nginx-proxy.conf"),
                     DIR=tmp, STREAM_MODULE=stream_module(), **kw)
        p = start(["nginx", "-p", tmp, "-c", cfg, "-g", "daemon off;"], c, "nginx-proxy", tmp, cgroup=LIMIT)
        return [p], []
    env = sidecar_env()
    if name in L7_ONE_HOP:
        prefix, trace = L7_ONE_HOP[name]
        p = start(wrap + sidecar_cmd(P[f"{prefix}_admin"], inbound=forwards(prefix, "backend"), trace=trace),
                  c, name, tmp, env, cgroup=LIMIT)
        return [p], [P[f"{prefix}_admin"]]
    if name == "l7-2hop-otlp":
        pin = start(sidecar_cmd(P["l7hop_in_admin"], inbound=forwards("l7hop_in", "backend"), trace="otlp-http"),
                    c, "l7-2hop-inbound", tmp, env, cgroup=LIMIT)
        for k in KINDS:
            wait_port(P[f"l7hop_in_{k}"], pin)
        pout = start(sidecar_cmd(P["l7hop_admin"], outbound=forwards("l7hop", "l7hop_in"), trace="otlp-http"),
                     c, "l7-2hop-outbound", tmp, env, cgroup=LIMIT)
        return [pout, pin], [P["l7hop_admin"], P["l7hop_in_admin"]]
    raise ValueError(name)


def stream_module():
    for path in STREAM_MODULES:
        if os.path.exists(path):
            return path
    raise RuntimeError("nginx stream module not found (Debian: apt-get install libnginx-mod-stream)")


def span_counters(admin_ports):
    exported = dropped = 0.0
    for port in admin_ports:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/metrics")
            text = c.getresponse().read().decode()
            c.close()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("l7inspect_spans_exported_total"):
                exported += float(line.split()[-1])
            elif line.startswith("l7inspect_spans_dropped_total"):
                dropped += float(line.split()[-1])
    return exported, dropped


def otlp_stats():
    try:
        c = http.client.HTTPConnection("127.0.0.1", P["otlp"], timeout=5)
        c.request("GET", "/stats")
        s = json.loads(c.getresponse().read())
        c.close()
        return s
    except OSError:
        return None


def soak(pids, port):
    """Constant load for --soak seconds, RSS sampled every second.

    Load: open-loop HTTP/1.1 keep-alive at --soak-rate plus --soak-conn-rate
    requests/s each on a new connection, so that both per-request and
    per-connection state would show up as growth. The slope is a least-squares
    fit over the samples after the first 10% (warm-up)."""
    d = ARGS.soak
    common = ["--addr", f"127.0.0.1:{port}", "--duration", d, "--warmup", 0,
              "--expect-len", len(BODY)]
    procs = []
    for extra in (["--rate", ARGS.soak_rate, "--conns", ARGS.lat_conns],
                  ["--rate", ARGS.soak_conn_rate, "--new-conn"]):
        procs.append(subprocess.Popen(load_cmd([L7BENCH, "http1"] + [str(a) for a in common + extra]),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    t0 = time.time()
    samples = []
    try:
        while any(p.poll() is None for p in procs) and time.time() - t0 < d + 30:
            samples.append((time.time() - t0, mem_kib(pids, "VmRSS")))
            time.sleep(1.0)
        outs = []
        for p in procs:
            o, e = p.communicate(timeout=30)
            if p.returncode != 0 or not o.strip():
                raise RuntimeError(f"soak load: exit {p.returncode}: {e[-300:]}")
            outs.append(json.loads(o.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    fit = [(t, kib) for t, kib in samples if t >= d * 0.1]
    slope = None
    if len(fit) >= 3:
        mt = statistics.fmean(t for t, _ in fit)
        mk = statistics.fmean(k for _, k in fit)
        den = sum((t - mt) ** 2 for t, _ in fit)
        slope = sum((t - mt) * (k - mk) for t, k in fit) / den * 60 if den else None
    return {"seconds": d, "rss_first_kib": fit[0][1] if fit else None,
            "rss_last_kib": samples[-1][1] if samples else None,
            "rss_max_kib": max(k for _, k in samples) if samples else None,
            "slope_kib_per_min": slope, "samples": samples,
            "keep_alive": outs[0], "new_conn": outs[1]}


def measure(name, desc, prefix, tmp):
    res = {"target": name, "description": desc, "ok": True, "error": None, "notes": []}
    port = {k: P[f"{prefix}_{k}"] for k in KINDS}
    tests = set(ARGS.tests.split(","))
    procs, admins = [], []

    def step(key, fn):
        """One measurement; a failure is noted and the others still run."""
        if key.split("_")[0] not in tests:
            return
        try:
            res[key] = fn()
        except Exception as e:
            res[key] = {"error": str(e)[:300]}
            res["notes"].append(f"{key} failed: {str(e)[:200]}")
            log(f"{name}: {key} failed: {e}")

    try:
        procs, admins = start_target(name, tmp)
        for p in procs:
            for k in KINDS:
                wait_port(port[k], p)
        if not procs:
            wait_port(port["h1"], None)
        pids = [p.pid for p in procs]
        http_get_ok(port["h1"])
        time.sleep(1.0)
        if pids:
            res["rss_idle_kib"] = mem_kib(pids, "VmRSS")
            if "mem" in tests:
                def idle_conns():
                    socks = open_idle(port["h1"], ARGS.idle_conns)
                    time.sleep(1.0)
                    kib = mem_kib(pids, "VmRSS")
                    for s in socks:
                        s.close()
                    time.sleep(1.0)
                    return {"kib": kib}
                # Once, on the freshly started proxy, whatever --repeat says:
                # a second round on the same process measures what the first
                # left behind (the heap's freed memory, not reused as tidily:
                # 42-48 MiB on the second and third rounds, against 32 on
                # the first), not the cost of 1,000 connections.
                res["rss_1k_idle_conns_kib"] = idle_conns()["kib"]
        d = ARGS.duration
        otlp0 = otlp_stats() if admins else None
        h1 = ["--addr", f"127.0.0.1:{port['h1']}", "--expect-len", len(BODY)]
        # HTTP/1.1 keep-alive: open loop at a moderate fixed rate for latency
        # (its own 1 s warm-up), then saturating (wrk) for throughput and CPU.
        # The saturating runs (and their warm-ups) run under the proxy's CPU
        # limit (--proxy-cpu-limit), everything else without.
        step("h1_lat", lambda: repeated(lambda: at_rate(l7bench(
            ["http1", "--rate", ARGS.h1_rate, "--conns", ARGS.lat_conns, "--duration", d, "--warmup", 1] + h1,
            d + 7, pids, (1, d)))))

        def h1_sat():
            with limited():
                wrk(port["h1"], ARGS.sat_conns, 1)  # warm-up
                return repeated(lambda: wrk(port["h1"], ARGS.sat_conns, d, pids=pids))
        step("h1_sat", h1_sat)

        # HTTP/2 (h2c prior knowledge): a fixed-rate run for latency, then a
        # saturating multiplexed run for throughput and CPU.
        log_file = os.path.join(tmp, "h2load.log")
        step("h2_rate", lambda: repeated(lambda: at_rate(h2load(
            port["h2"], ARGS.h2_conns, 100, d, log_file,
            rps_per_conn=max(1, ARGS.h2_rate // ARGS.h2_conns), pids=pids))))

        def h2_sat():
            with limited():
                return repeated(lambda: h2load(
                    port["h2"], ARGS.h2_sat_conns, ARGS.h2_streams, d, log_file, pids=pids))
        step("h2_sat", h2_sat)

        # gRPC unary: open loop at a fixed rate, then closed loop (saturating).
        grpc = ["grpc", "--addr", f"127.0.0.1:{port['grpc']}"]
        step("grpc_rate", lambda: repeated(lambda: at_rate(l7bench(
            grpc + ["--conns", ARGS.h2_conns, "--rate", ARGS.grpc_rate, "--duration", d, "--warmup", 1], d + 7,
            pids, (1, d)))))

        def grpc_sat():
            sat = grpc + ["--conns", ARGS.grpc_conns, "--streams", ARGS.grpc_streams]
            with limited():
                l7bench(sat + ["--duration", 1, "--warmup", 0], 7)  # warm-up
                return repeated(lambda: l7bench(
                    sat + ["--duration", d, "--warmup", 0], d + 7, pids, (0, d)))
        step("grpc_sat", grpc_sat)

        # Opaque TCP bulk upload into the sink.
        tcp = ["bulk", "--addr", f"127.0.0.1:{port['tcp']}", "--streams", ARGS.tcp_streams]

        def tcp_bulk():
            with limited():
                l7bench(tcp + ["--duration", 1, "--warmup", 0], 3)  # warm-up
                return repeated(lambda: l7bench(tcp + ["--duration", d, "--warmup", 0], d + 3, pids, (0, d),
                                                rate_key="gib_per_s"), rate_key="gib_per_s")
        step("tcp_bulk", tcp_bulk)

        # Time to first byte from a server that speaks first.
        step("ttfb", lambda: repeated(lambda: l7bench(
            ["ttfb", "--addr", f"127.0.0.1:{port['banner']}", "--count", ARGS.ttfb_count,
             "--expect", BANNER], 120)))

        # HTTP/1.1, a new connection per request (Connection: close),
        # saturating. Last, with the proxy's open descriptors counted before
        # and 2 s after: connections a proxy fails to close pile up here
        # (tens of thousands in 10 s) and would spoil the runs after it.
        def h1_close():
            fds0 = open_fds(pids)
            with limited():
                wrk(port["h1"], ARGS.close_conns, 1, close=True)  # warm-up
                r = repeated(lambda: wrk(port["h1"], ARGS.close_conns, d, close=True, pids=pids))
            time.sleep(2.0)
            if pids:
                r["fds_before"], r["fds_after"] = fds0, open_fds(pids)
            return r
        if pids:
            res["rss_peak_before_close_kib"] = mem_kib(pids, "VmHWM")
        step("h1close_sat", h1_close)

        # System calls and context switches per request (--tests syscalls).
        if pids:
            step("syscalls", lambda: syscalls_profile(pids, port))

        if pids:
            res["rss_peak_kib"] = mem_kib(pids, "VmHWM")
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p._e2e_name} died during the run (exit {p.returncode})")
        if admins:
            time.sleep(2.5)  # let the batch exporter flush (1 s schedule delay)
            exp, drop = span_counters(admins)
            res["spans_exported"], res["spans_dropped"] = exp, drop
            otlp1 = otlp_stats()
            if name.startswith("l7-") and "otlp" in name and otlp0 and otlp1:
                res["otlp_posts"] = otlp1["posts"] - otlp0["posts"]
                res["otlp_bytes"] = otlp1["bytes"] - otlp0["bytes"]
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p._e2e_name} died during the run (exit {p.returncode})")
        if ARGS.soak and pids and "soak" in tests and (name.startswith("l7-") or ARGS.soak_all):
            # On a freshly started proxy, so that its growth is the soak's own.
            for p in procs:
                stop(p)
            procs, _ = start_target(name, tmp)
            for p in procs:
                for k in KINDS:
                    wait_port(port[k], p)
            http_get_ok(port["h1"])
            step("soak", lambda: soak([p.pid for p in procs], port["h1"]))
        if name == "l7-2hop-otlp":
            res["notes"].append("CPU and memory are the sum of both sidecars")
        if name == "nginx":
            res["notes"].append("CPU and memory are master + worker")
    except Exception as e:
        res["ok"] = False
        res["error"] = str(e)[:300]
        log(f"{name}: FAILED: {e}")
    finally:
        for p in procs:
            stop(p)
    return res

# ------------------------------------------------------------ TLS termination
#
# --tests tls (opt-in): HTTPS through a proxy that terminates TLS and
# forwards plaintext to the same nginx backend. Its own targets (below),
# each with two listeners: HTTP/1.1 over TLS (tls_h1) and h2 over TLS
# (tls_h2). One ECDSA P-256 certificate per run, made with openssl. The load
# is h2load for everything (it prints the negotiated protocol and cipher,
# and sends no SNI to an IP address); the saturating runs are under the
# proxy's CPU limit, as in the cleartext tests.

TLS_TARGETS = [
    # name, description, port prefix
    ("haproxy-tls", "haproxy 1 hop, nbthread 1, bind ... ssl crt (OpenSSL); plaintext to the backend "
                    "(keep-alive, http-reuse safe; h2: proto h2 to the h2c port)", "haproxy_tls"),
    ("nginx-tls", "nginx 1 hop, 1 worker, listen ... ssl (OpenSSL); upstream keepalive over HTTP/1.1 "
                  "(h2 in, HTTP/1.1 upstream)", "nginx_tls"),
    ("l7-1hop-tls-off", "l7inspect 1 hop, --tls-terminate on its inbound forwards (rustls, ring), "
                        "tracing off (--sample-ratio 0)", "l7tls_off"),
    ("l7-1hop-tls-otlp", "l7inspect 1 hop, --tls-terminate, 100% sampled, OTLP/HTTP to the live local sink",
     "l7tls_otlp"),
]
TLS_KINDS = ("tls_h1", "tls_h2")
# The plaintext backend port each TLS listener forwards to.
TLS_BACKEND = {"tls_h1": "h1", "tls_h2": "h2"}
# Ports: free offsets of the 100 (see OFFSETS); l7inspect's admin port third.
for _prefix, _base in (("haproxy_tls", 45), ("nginx_tls", 55), ("l7tls_off", 61), ("l7tls_otlp", 64)):
    OFFSETS[f"{_prefix}_tls_h1"] = _base
    OFFSETS[f"{_prefix}_tls_h2"] = _base + 1
    if _prefix.startswith("l7"):
        OFFSETS[f"{_prefix}_admin"] = _base + 2
L7_TLS = {"l7-1hop-tls-off": ("l7tls_off", "off"), "l7-1hop-tls-otlp": ("l7tls_otlp", "otlp-http")}


def make_cert(tmp):
    """One ECDSA P-256 self-signed certificate for every TLS target:
    (cert.pem, key.pem (PKCS#8), cert+key in one file for haproxy)."""
    cert, key, both = (os.path.join(tmp, f) for f in ("tls-cert.pem", "tls-key.pem", "tls-both.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "2", "-subj", "/CN=bench.local",
                    "-addext", "subjectAltName=DNS:bench.local,IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=60)
    with open(both, "w") as f:
        for path in (cert, key):
            with open(path) as src:
                f.write(src.read())
    return {"cert": cert, "key": key, "pem": both}


def start_tls_target(name, tmp, certs):
    """Start a TLS target in the CPU-limit cgroup; (PIDs, admin ports)."""
    c = ARGS.proxy_cpu
    if name == "haproxy-tls":
        kw = {f"{k.upper()}_PORT": P[f"haproxy_tls_{k}"] for k in TLS_KINDS}
        kw.update({f"BACKEND_{b.upper()}_PORT": P[f"backend_{b}"] for b in TLS_BACKEND.values()})
        cfg = render("haproxy-tls.cfg", os.path.join(tmp, "haproxy-tls.cfg"), PEM=certs["pem"], **kw)
        return [start(["haproxy", "-db", "-f", cfg], c, name, tmp, cgroup=LIMIT)], []
    if name == "nginx-tls":
        kw = {f"{k.upper()}_PORT": P[f"nginx_tls_{k}"] for k in TLS_KINDS}
        cfg = render("nginx-proxy-tls.conf", os.path.join(tmp, "nginx-proxy-tls.conf"), DIR=tmp,
                     CERT=certs["cert"], KEY=certs["key"], BACKEND_H1_PORT=P["backend_h1"], **kw)
        return [start(["nginx", "-p", tmp, "-c", cfg, "-g", "daemon off;"], c, name, tmp, cgroup=LIMIT)], []
    prefix, trace = L7_TLS[name]
    pairs = [(P[f"{prefix}_{k}"], P[f"backend_{TLS_BACKEND[k]}"]) for k in TLS_KINDS]
    cmd = sidecar_cmd(P[f"{prefix}_admin"], inbound=pairs, trace=trace)
    for lp, _ in pairs:
        cmd += ["--tls-terminate", str(lp)]  # the listener's own port: plaintext to its target
    cmd += ["--tls-cert", certs["cert"], "--tls-key", certs["key"]]
    return [start(cmd, c, name, tmp, sidecar_env(), cgroup=LIMIT)], [P[f"{prefix}_admin"]]


def https_get_ok(port):
    """One GET over TLS (the self-signed certificate not verified)."""
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ctx)
    c.request("GET", "/", headers={"Host": "bench.local"})
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200 or body != BODY:
        raise RuntimeError(f"GET over TLS through port {port}: {r.status}, {len(body)} bytes")


def h2load_whole(cmds, pids, min_s=0.0):
    """Run h2load commands (fixed request counts) one after the other on the
    load CPU, again from the first while less than min_s has passed; the
    proxy's CPU over the whole span, from before the first starts to after
    the last ends (no connection outlives a run here, so there is nothing
    to trim). The rate is the successful requests over that span."""
    runs = []
    s0 = snapshot(pids)
    t0 = time.monotonic()
    while True:
        for cmd in cmds:
            p = subprocess.Popen(load_cmd(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL, text=True)
            p._e2e_name = "h2load"
            CHILDREN.append(p)
            try:
                out, err = p.communicate(timeout=120)
            finally:
                stop(p)
            runs.append(h2load_result(out, err))
        if time.monotonic() - t0 >= min_s:
            break
    s1 = snapshot(pids)
    wall = s1[0] - s0[0]
    r = {"requests": sum(x["requests"] for x in runs), "failed": sum(x["failed"] for x in runs),
         "h2load_runs": len(runs), "tls": runs[-1].get("tls")}
    r["rps"] = r["requests"] / wall
    r.update(window_cpu(s0, s1, pids))
    return classify(r)


def measure_tls(name, desc, prefix, tmp, certs):
    """--tests tls on one target: HTTP/1.1 keep-alive over TLS at a fixed
    rate (latency, CPU per request) and saturating; h2 over TLS saturating;
    a new TLS connection per request, resumed (h2load reconnects after
    `Connection: close` and offers the session it was given) and with full
    handshakes (fresh h2load clients, one request each), saturating; and
    full handshakes at a fixed rate (CPU per connection)."""
    res = {"target": name, "description": desc, "ok": True, "error": None, "notes": [], "tls_target": True}
    port = {k: P[f"{prefix}_{k}"] for k in TLS_KINDS}
    procs, admins = [], []
    d = ARGS.duration

    def step(key, fn):
        try:
            res[key] = fn()
        except Exception as e:
            res[key] = {"error": str(e)[:300]}
            res["notes"].append(f"{key} failed: {str(e)[:200]}")
            log(f"{name}: {key} failed: {e}")

    try:
        procs, admins = start_tls_target(name, tmp, certs)
        for p in procs:
            for k in TLS_KINDS:
                wait_port(port[k], p)
        pids = [p.pid for p in procs]
        # HTTP/1.1 over TLS only: l7inspect forwards in the version the
        # client chose, and its tls_h2 listener's backend speaks only h2c
        # (the h2 runs below fail if h2 does not work).
        https_get_ok(port["tls_h1"])
        time.sleep(1.0)
        res["rss_idle_kib"] = mem_kib(pids, "VmRSS")
        log_file = os.path.join(tmp, "h2load-tls.log")
        h1 = port["tls_h1"]
        url = f"https://127.0.0.1:{h1}/"

        step("tls_h1_lat", lambda: repeated(lambda: at_rate(h2load(
            h1, ARGS.lat_conns, 1, d, log_file, rps_per_conn=max(1, ARGS.h1_rate // ARGS.lat_conns),
            pids=pids, scheme="https", h1=True))))

        def h1_sat():
            with limited():
                return repeated(lambda: h2load(h1, ARGS.sat_conns, 1, d, log_file, pids=pids,
                                               scheme="https", h1=True))
        step("tls_h1_sat", h1_sat)

        def h2_sat():
            with limited():
                return repeated(lambda: h2load(port["tls_h2"], ARGS.h2_sat_conns, ARGS.h2_streams, d, log_file,
                                               pids=pids, scheme="https"))
        step("tls_h2_sat", h2_sat)

        # A new connection per request, the session resumed: h2load's
        # clients reconnect after `Connection: close` and offer the session
        # (TLS 1.3 ticket) of their last connection: a PSK handshake with a
        # fresh X25519 exchange, no certificate. The count is sized from a
        # 1 s warm-up so that the run lasts about --duration seconds.
        close = ["h2load", "-t1", "--h1", "-H", "Connection: close"]

        def resumed():
            with limited():
                w = h2load_whole([close + [f"-c{ARGS.close_conns}", f"-n{ARGS.close_conns * 20}", url]], pids,
                                 min_s=1.0)
                n = max(ARGS.close_conns, int(w["rps"] * d))
                return repeated(lambda: h2load_whole([close + [f"-c{ARGS.close_conns}", f"-n{n}", url]], pids))
        step("tls_resume_sat", resumed)

        # Full handshakes: every h2load client is new (no session to offer)
        # and makes one request: bursts of --tls-burst connections opened at
        # once, burst after burst, for --duration seconds.
        burst = ["h2load", "-t1", "--h1", f"-c{ARGS.tls_burst}", f"-n{ARGS.tls_burst}", url]

        def full():
            with limited():
                h2load_whole([burst], pids, min_s=1.0)  # warm-up
                return repeated(lambda: h2load_whole([burst], pids, min_s=d))
        step("tls_full_sat", full)

        # Full handshakes at a fixed rate, without the limit: the proxy's CPU
        # per new connection when every proxy gets the same connections.
        rate = ARGS.tls_conn_rate
        per = max(1, rate // 10)  # h2load -r: new clients per 100 ms

        def full_rate():
            n = per * 10 * d
            r = h2load_whole([["h2load", "-t1", "--h1", f"-c{n}", f"-n{n}", f"-r{per}", "--rate-period=100ms",
                               url]], pids)
            return at_rate(r)
        step("tls_full_rate", lambda: repeated(full_rate))

        res["rss_peak_kib"] = mem_kib(pids, "VmHWM")
        if admins:
            time.sleep(2.5)  # let the batch exporter flush
            res["spans_exported"], res["spans_dropped"] = span_counters(admins)
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p._e2e_name} died during the run (exit {p.returncode})")
        if name == "nginx-tls":
            res["notes"].append("CPU and memory are master + worker")
    except Exception as e:
        res["ok"] = False
        res["error"] = str(e)[:300]
        log(f"{name}: FAILED: {e}")
    finally:
        for p in procs:
            stop(p)
    return res


TLS_SAT = (("tls_h1_sat", "HTTP/1.1 keep-alive"), ("tls_h2_sat", "h2"),
           ("tls_resume_sat", "new conn/req, resumed"), ("tls_full_sat", "new conn/req, full handshake"))


def tls_tables(results):
    got = [r for r in results if r.get("tls_target")]
    if not got:
        return []
    out = []

    def tls_of(r):
        for key, _ in TLS_SAT:
            t = r.get(key, {}).get("tls") if isinstance(r.get(key), dict) else None
            if t:
                return f"{t.get('TLS Protocol', '?')} {t.get('Cipher', '?')} {t.get('Server Temp Key', '')}".strip()
        return "—"
    hdr = ["target", "TLS (HTTP/1.1 run)"]
    for _, label in TLS_SAT:
        hdr += [f"{label} req/s", "CPU %", "CPU µs/req"]
    rows = []
    for r in got:
        if not r["ok"]:
            rows.append([r["target"], "not measured: " + (r["error"] or "?")] + ["—"] * (len(hdr) - 2))
            continue
        row = [r["target"], tls_of(r)]
        for key, _ in TLS_SAT:
            x = r.get(key) if isinstance(r.get(key), dict) else {}
            row += [rate_cell(x), cpu_cell(x), fmt(x.get("cpu_us_per_req"), ".1f")]
        rows.append(row)
    out.append((f"HTTPS through a TLS-terminating proxy, saturating (proxy CPU % {cpu_of()}; "
                "new-connection rows: one request per connection, req/s = connections/s)", hdr, rows))
    hdr = ["target", f"HTTP/1.1 over TLS {ARGS.h1_rate}/s p50 / p99 / p99.9 ms", "CPU µs/req",
           f"full handshakes {ARGS.tls_conn_rate}/s p50 / p99 ms (h2load, connect to response)", "CPU µs/conn"]
    rows = []
    for r in got:
        if not r["ok"]:
            continue
        lat = r.get("tls_h1_lat") if isinstance(r.get("tls_h1_lat"), dict) else {}
        fr = r.get("tls_full_rate") if isinstance(r.get("tls_full_rate"), dict) else {}
        rows.append([r["target"], us3(lat), fmt(lat.get("cpu_us_per_req"), ".1f"),
                     fmt(fr.get("rps"), ".0f") + " conn/s achieved", fmt(fr.get("cpu_us_per_req"), ".1f")])
    out.append(("HTTPS at a fixed rate, no CPU limit (every proxy serves the same load)", hdr, rows))
    ha = next((r for r in got if r["ok"] and r["target"] == "haproxy-tls"), None)
    rows = []
    for r in got:
        if not r["ok"] or not ha or r is ha:
            continue
        row = [r["target"]]
        for key, _ in TLS_SAT:
            x, h = r.get(key), ha.get(key)
            if not (isinstance(x, dict) and isinstance(h, dict) and x.get("rps") and h.get("rps")):
                row += ["—", "—"]
            elif x.get("bound") != "proxy" or h.get("bound") != "proxy":
                why = ", ".join(f"{n} {b}" for n, b in ((r["target"], x.get("bound")), ("haproxy-tls", h.get("bound")))
                                if b != "proxy")
                row += [f"— ({why})", "—"]
            else:
                row += [f"{x['rps'] / h['rps']:.2f}×", f"{x['cpu_us_per_req'] / h['cpu_us_per_req']:.2f}×"]
        for key in ("tls_h1_lat", "tls_full_rate"):
            x, h = r.get(key), ha.get(key)
            ok = isinstance(x, dict) and isinstance(h, dict) and x.get("cpu_us_per_req") and h.get("cpu_us_per_req")
            row.append(f"{x['cpu_us_per_req'] / h['cpu_us_per_req']:.2f}×" if ok else "—")
        rows.append(row)
    if rows:
        hdr = ["target"]
        for _, label in TLS_SAT:
            hdr += [f"{label} req/s ÷ haproxy-tls", "CPU/req ÷"]
        hdr += ["fixed-rate HTTP/1.1 CPU/req ÷", "fixed-rate full handshake CPU/conn ÷"]
        out.append(("TLS: against haproxy-tls (saturating: CPU-bound rows only)", hdr, rows))
    return out


# ------------------------------------------------------ callgrind, syscalls


def h2load_count(port, n, h1, conns, timeout=600):
    """h2load, a fixed number of requests (HTTP/1.1 with --h1, else h2c with
    16 streams per connection); the number that succeeded."""
    cmd = ["h2load", "-t1", f"-n{n}", f"-c{conns}"] + (["--h1"] if h1 else ["-m16"])
    out = subprocess.run(load_cmd(cmd + [f"http://127.0.0.1:{port}/"]), capture_output=True,
                         text=True, timeout=timeout)
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out.stdout)
    if not m:
        raise RuntimeError("h2load: " + out.stdout[-500:] + out.stderr[-300:])
    if int(m.group(1)) != n:
        raise RuntimeError(f"h2load: {m.group(1)} of {n} requests succeeded")
    return n


def grpc_count(port, n, _h1, conns):
    """About n unary gRPC calls (l7bench grpc, open loop at a rate the proxy
    keeps up with under valgrind); the number that succeeded, all of them or
    an error."""
    rate = 500
    r = l7bench(["grpc", "--addr", f"127.0.0.1:{port}", "--conns", conns, "--rate", rate,
                 "--duration", max(1.0, n / rate), "--warmup", 0, "--grace", 30], n / rate + 40)
    if r.get("errors") or r.get("unfinished") or r.get("grpc_not_ok"):
        raise RuntimeError(f"l7bench grpc: {r.get('errors')} errors, {r.get('unfinished')} unfinished, "
                           f"{r.get('grpc_not_ok')} not OK")
    return r["requests"]


# Targets of the profile modes: one process each.
PROFILED = ("haproxy",) + tuple(L7_ONE_HOP)
FLUSH_S = 2.5  # the sidecar's batch exporter sends every second


def callgrind_totals(path):
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def callgrind_profile(name, prefix, tmp):
    """Instructions per request: the proxy under callgrind; warm-up; counters
    zeroed; a fixed number of requests; the exporter given time to send their
    spans; counters dumped. Ir is user-space instructions of all the
    proxy's threads, the same for the same binary and load on any machine."""
    out_tpl = os.path.join(tmp, f"callgrind.{name}.out")
    wrap = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_tpl}"]
    procs, _ = start_target(name, tmp, wrap=wrap)
    p = procs[0]
    res = {"requests": ARGS.profile_requests}
    try:
        for k in ("h1", "h2", "grpc"):
            wait_port(P[f"{prefix}_{k}"], p, timeout=300)
        http_get_ok(P[f"{prefix}_h1"])
        for proto in ("h1", "h2", "grpc"):
            port = P[f"{prefix}_{proto}"]
            load = grpc_count if proto == "grpc" else h2load_count
            load(port, ARGS.profile_warmup, proto == "h1", ARGS.profile_conns)
            # The warm-up's spans exported before the counters are zeroed,
            # so that the measured window holds the spans of its own
            # requests only (one each), not a tenth more.
            time.sleep(FLUSH_S)
            subprocess.run(["callgrind_control", "--zero", str(p.pid)], check=True, capture_output=True, timeout=120)
            n = load(port, ARGS.profile_requests, proto == "h1", ARGS.profile_conns)
            time.sleep(FLUSH_S)  # the spans of these requests exported, if they are
            before = set(os.listdir(tmp))
            subprocess.run(["callgrind_control", "--dump", str(p.pid)], check=True, capture_output=True, timeout=120)
            deadline = time.time() + 60
            new = []
            while time.time() < deadline and not new:
                new = [f for f in set(os.listdir(tmp)) - before if f.startswith(f"callgrind.{name}.out")]
                time.sleep(0.2)
            if not new:
                raise RuntimeError("callgrind_control --dump wrote no file")
            time.sleep(0.5)  # let the dump finish writing
            path = os.path.join(tmp, sorted(new)[-1])
            ir = callgrind_totals(path)
            res[proto] = {"ir": ir, "requests": n, "ir_per_req": ir / n}
            if ARGS.profile_dir:  # kept for callgrind_annotate
                os.makedirs(ARGS.profile_dir, exist_ok=True)
                kept = os.path.join(ARGS.profile_dir, f"callgrind.{name}.{proto}.out")
                shutil.move(path, kept)
                res[proto]["file"] = kept
            else:
                os.unlink(path)
    finally:
        stop(p, timeout=30)
        for f in os.listdir(tmp):
            if f.startswith(f"callgrind.{name}.out"):
                os.unlink(os.path.join(tmp, f))
    return res


SYSCALLS = ("read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg",
            "epoll_wait", "epoll_pwait", "epoll_ctl", "futex", "sched_yield", "accept4", "close",
            "connect", "setsockopt", "getsockopt", "shutdown", "timerfd_settime")


def perf_events():
    """The syscall tracepoints perf can count here (None: perf unusable)."""
    if not shutil.which("perf"):
        return None
    o = subprocess.run(["perf", "list", "tracepoint"], capture_output=True, text=True, timeout=60)
    have = set(re.findall(r"syscalls:sys_enter_(\w+)", o.stdout))
    ev = [f"syscalls:sys_enter_{s}" for s in SYSCALLS if s in have]
    if not ev or subprocess.run(["perf", "stat", "-e", "raw_syscalls:sys_enter", "true"],
                                capture_output=True).returncode != 0:
        return None
    return ["raw_syscalls:sys_enter", "context-switches"] + ev


def ctx_switches(pids):
    total = 0
    for p in tree(pids):
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/status") as f:
                    for line in f:
                        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                            total += int(line.split()[1])
        except OSError:
            pass
    return total


def syscalls_profile(pids, port):
    """System calls and context switches per request over a fixed number of
    requests (HTTP/1.1 and h2c), counted by `perf stat` on the syscall
    tracepoints (attached to the proxy's threads), else by `strace -c -f`."""
    events = perf_events()
    n = ARGS.syscall_requests
    res = {"requests": n, "counter": "perf" if events else "strace"}
    for proto, h1 in (("h1", True), ("h2", False)):
        h2load_count(port[proto], min(n, 2000), h1, ARGS.profile_conns)  # warm-up
        outf = os.path.join(tempfile.gettempdir(), f"l7e2e-sys-{os.getpid()}.txt")
        pid_list = ",".join(str(p) for p in tree(pids))
        if events:
            cmd = ["perf", "stat", "-x,", "-o", outf, "-e", ",".join(events), "-p", pid_list]
        else:
            cmd = ["strace", "-c", "-f", "-o", outf] + sum((["-p", str(p)] for p in tree(pids)), [])
        cs0 = ctx_switches(pids)
        counter = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        counter._e2e_name = cmd[0]
        CHILDREN.append(counter)
        try:
            time.sleep(1.0)  # attached
            h2load_count(port[proto], n, h1, ARGS.profile_conns)
        finally:
            counter.send_signal(signal.SIGINT)
            try:
                counter.wait(30)
            finally:
                stop(counter)
        cs = ctx_switches(pids) - cs0
        counts = {}
        with open(outf) as f:
            text = f.read()
        os.unlink(outf)
        if events:
            for line in text.splitlines():
                parts = line.split(",")
                if len(parts) >= 3 and parts[0].strip().isdigit():
                    ev = parts[2]
                    key = ("total" if ev == "raw_syscalls:sys_enter" else
                           "perf_context_switches" if ev == "context-switches" else ev.split("sys_enter_")[-1])
                    counts[key] = int(parts[0])
        else:
            for line in text.splitlines():
                parts = line.split()
                if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                    counts[parts[-1]] = int(parts[3])
            counts["total"] = sum(counts.values())
        res[proto] = {"per_req": {k: v / n for k, v in counts.items() if v},
                      "context_switches_per_req": cs / n}
    return res


def rounds_profile(results, tmp):
    """--tests rounds: the saturating HTTP/1.1 run of h1_sat (wrk, under the
    CPU limit), with every selected target running at once and measured in
    --rounds rounds of one run each, the order rotated every round. Each
    target's ratio to haproxy is taken within a round (its run and haproxy's
    at most a few runs apart) and the median of those ratios is reported:
    the machine's drift over a long run then moves both sides of a ratio
    alike, where target after target it lands on one of them."""
    prefix = {name: pre for name, _, pre in TARGETS}
    names = [r["target"] for r in results if r["ok"]]
    running, procs = {}, []
    try:
        for name in names:
            ps, _ = start_target(name, tmp)
            procs += ps
            for p in ps:
                for k in KINDS:
                    wait_port(P[f"{prefix[name]}_{k}"], p)
            port = P[f"{prefix[name]}_h1"]
            http_get_ok(port)
            running[name] = (port, [p.pid for p in ps])
        runs = {n: [] for n in names}
        with limited():
            for i in range(ARGS.rounds):
                k = i % len(names)
                for n in names[k:] + names[:k]:
                    port, pids = running[n]
                    wrk(port, ARGS.sat_conns, 1)  # warm-up
                    runs[n].append(wrk(port, ARGS.sat_conns, ARGS.duration, pids=pids))
                log(f"rounds: {i + 1} of {ARGS.rounds} done")
    finally:
        for p in procs:
            stop(p)
    ha = runs.get("haproxy")
    for r in results:
        n = r["target"]
        if n not in runs:
            continue
        out = {"runs": runs[n], "median": median_of(runs[n]) if len(runs[n]) > 1 else dict(runs[n][0])}
        if len(runs[n]) > 1 and "proxy_cpu_pct" in out["median"]:
            out["median"].pop("bound", None)
            classify(out["median"])
        out["median"].pop("runs", None)
        if ha and n not in ("haproxy", "direct"):
            rps, cpu = [], []
            for x, h in zip(runs[n], ha):
                if x.get("bound") == "proxy" and h.get("bound") == "proxy":
                    rps.append(x["rps"] / h["rps"])
                    cpu.append(x["cpu_us_per_req"] / h["cpu_us_per_req"])
                else:
                    rps.append(None)
                    cpu.append(None)
            out["rps_ratio_per_round"], out["cpu_ratio_per_round"] = rps, cpu
            ok = [v for v in rps if v is not None]
            if ok:
                out["rps_ratio_median"] = statistics.median(ok)
                out["cpu_ratio_median"] = statistics.median(v for v in cpu if v is not None)
        r["rounds"] = out


def rounds_table(results):
    got = [r for r in results if isinstance(r.get("rounds"), dict)]
    if not got:
        return []
    rows = []
    for r in got:
        x = r["rounds"]
        m = x["median"]
        per = x.get("rps_ratio_per_round")
        rows.append([r["target"], rate_cell(m), cpu_cell(m), fmt(m.get("cpu_us_per_req"), ".2f"),
                     fmt(m.get("user_us_per_req"), ".2f"), fmt(m.get("sys_us_per_req"), ".2f"),
                     fmt(m.get("context_switches_per_req"), ".3f"),
                     f"{x['rps_ratio_median']:.3f}×" if "rps_ratio_median" in x else "—",
                     f"{x['cpu_ratio_median']:.3f}×" if "cpu_ratio_median" in x else "—",
                     " ".join("—" if v is None else f"{v:.2f}" for v in per) if per else "—"])
    med = {r["target"]: r["rounds"]["median"].get("rps") for r in got}
    best = max((v for n, v in med.items() if n != "direct" and v), default=None)
    headroom = (f"; direct ÷ the fastest proxy {med['direct'] / best:.2f}×"
                if med.get("direct") and best else "")
    return [(f"HTTP/1.1 keep-alive, saturating, interleaved: every target running at once, {ARGS.rounds} rounds "
             f"of one {ARGS.duration} s wrk -c{ARGS.sat_conns} run each (order rotated per round); medians over "
             f"the rounds; ratios to haproxy taken within each round (CPU-bound runs only), then their median"
             + headroom,
             ["target", "req/s", "proxy CPU %", "CPU µs/req", "user µs/req", "system µs/req",
              "context switches/req", "req/s ÷ haproxy", "CPU/req ÷ haproxy", "req/s ÷ haproxy per round"], rows)]


def profile_tables(results):
    out = []
    rows = []
    for r in results:
        c = r.get("callgrind")
        if isinstance(c, dict) and "h1" in c:
            rows.append([r["target"]] + [f"{c[k]['ir_per_req'] / 1000:.1f}k" if k in c else "—"
                                         for k in ("h1", "h2", "grpc")])
        elif isinstance(c, dict):
            rows.append([r["target"], "not measured: " + c.get("error", "?"), "—", "—"])
    if rows:
        out.append((f"Instructions per request (callgrind, {ARGS.profile_requests} requests after "
                    f"{ARGS.profile_warmup} warm-up, h2load -c{ARGS.profile_conns}; HTTP/2 -m16; "
                    f"gRPC unary: l7bench grpc, open loop, {ARGS.profile_conns} connections)",
                    ["target", "HTTP/1.1 Ir/req", "HTTP/2 Ir/req", "gRPC Ir/req"], rows))
    got = [r for r in results if isinstance(r.get("syscalls"), dict) and "h1" in r["syscalls"]]
    for proto, label in (("h1", "HTTP/1.1"), ("h2", "HTTP/2")):
        if not got:
            break
        names = set()
        for r in got:
            names |= set(r["syscalls"][proto]["per_req"])
        names.discard("total")
        names.discard("perf_context_switches")
        # Calls under 0.005 per request for every target are left out of
        # the rows (still in the total and in the JSON).
        order = [s for s in SYSCALLS if s in names] + sorted(names - set(SYSCALLS))
        order = [s for s in order if any(r["syscalls"][proto]["per_req"].get(s, 0) >= 0.005 for r in got)]
        hdr = ["per request"] + [r["target"] for r in got]
        rows = [[s] + [fmt(r["syscalls"][proto]["per_req"].get(s, 0), ".2f") for r in got] for s in order]
        rows.append(["other"] + [fmt(r["syscalls"][proto]["per_req"].get("total", 0) - sum(
            v for k, v in r["syscalls"][proto]["per_req"].items() if k in order), ".2f") for r in got])
        rows.append(["all system calls"] + [fmt(r["syscalls"][proto]["per_req"].get("total"), ".2f") for r in got])
        rows.append(["context switches"] + [fmt(r["syscalls"][proto]["context_switches_per_req"], ".3f")
                                            for r in got])
        out.append((f"System calls per {label} request ({got[0]['syscalls']['counter']}, "
                    f"{ARGS.syscall_requests} requests, h2load -c{ARGS.profile_conns}"
                    f"{'' if proto == 'h1' else ' -m16'})", hdr, rows))
    return out


# ------------------------------------------------------------------ output


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def us3(r, unit=1000, spec=".2f", keys=("p50_us", "p99_us", "p999_us")):
    """p50 / p99 / p99.9 of a run, in ms by default."""
    if not r or r.get("p50_us") is None:
        return "—"
    return " / ".join(format(r[k] / unit, spec) for k in keys)


def added(r, d, unit=1000, spec=".2f", keys=("p50_us", "p99_us", "p999_us")):
    if not r or not d or r.get("p50_us") is None or d.get("p50_us") is None:
        return "—"
    return " / ".join(format((r[k] - d[k]) / unit, spec) for k in keys)


def tables(results):
    """(title, header, rows) per kind of traffic."""
    direct = next((r for r in results if r["target"] == "direct" and r["ok"]), None)
    out = []

    def rows_of(cells):
        rows = []
        for r in results:
            if r.get("tls_target"):
                continue
            if not r["ok"]:
                rows.append([r["target"], "not measured: " + (r["error"] or "?")] + ["—"] * (len(hdr) - 2))
                continue
            d = direct if (direct and r is not direct) else None

            def g(key):
                v = r.get(key)
                return v if isinstance(v, dict) else {}

            def gd(key):
                return (d.get(key) if d and isinstance(d.get(key), dict) else None)
            rows.append([r["target"]] + cells(r, g, gd))
        return rows

    def mib(r, k):
        return fmt(r[k] / 1024, ".1f") if r.get(k) is not None else "—"

    def sat(x):
        """req/s, proxy CPU % (of its limit) and CPU µs/req of a saturating run."""
        return [rate_cell(x), cpu_cell(x), fmt(x.get("cpu_us_per_req"), ".1f")]

    hdr = ["target"]
    for what in ("HTTP/1.1 keep-alive", "h2c", "gRPC unary"):
        hdr += [f"{what} req/s", "CPU %", "CPU µs/req"]
    hdr.append("load CPU % (direct)")
    out.append((f"Throughput, saturating (proxy CPU % {cpu_of()}; under 90%: not the bottleneck, "
                "marked and left out of the ratios)", hdr, rows_of(lambda r, g, gd: (
                    sat(g("h1_sat")) + sat(g("h2_sat")) + sat(g("grpc_sat"))
                    + [" / ".join(fmt(g(k).get("load_core_pct"), ".0f") for k in ("h1_sat", "h2_sat", "grpc_sat"))
                       if r["target"] == "direct" and any(g(k) for k in ("h1_sat", "h2_sat", "grpc_sat"))
                       else "—"]))))
    hdr = ["target", f"open-loop {ARGS.h1_rate}/s p50 / p99 / p99.9 ms", "added p50 / p99 / p99.9 ms",
           "new conn per req: req/s (sat)", "CPU %", "CPU µs/req", "fds left open 2 s after"]
    out.append(("HTTP/1.1", hdr, rows_of(lambda r, g, gd: [
        us3(g("h1_lat")), added(g("h1_lat"), gd("h1_lat")),
        *sat(g("h1close_sat")),  # CPU % of the limit, as in the throughput table
        (fmt(g("h1close_sat")["fds_after"] - g("h1close_sat")["fds_before"], ".0f")
         if "fds_after" in g("h1close_sat") else "—"),
    ])))
    hdr = ["target", f"h2 {ARGS.h2_rate}/s p50 / p99 / p99.9 ms", "added p50 / p99 ms",
           f"gRPC {ARGS.grpc_rate}/s p50 / p99 / p99.9 ms", "added p50 / p99 ms", "gRPC not OK"]
    two = ("p50_us", "p99_us")
    out.append(("HTTP/2 and gRPC unary, fixed rate", hdr, rows_of(lambda r, g, gd: [
        us3(g("h2_rate")), added(g("h2_rate"), gd("h2_rate"), keys=two),
        us3(g("grpc_rate")), added(g("grpc_rate"), gd("grpc_rate"), keys=two),
        grpc_bad(r),
    ])))
    hdr = ["target", f"TCP bulk GiB/s ({ARGS.tcp_streams} stream{'s' if ARGS.tcp_streams > 1 else ''})",
           "CPU %", "CPU s/GiB", "TTFB p50 / p99 / p99.9 µs", "added p50 / p99 µs",
           "RSS idle MiB", f"RSS {ARGS.idle_conns} idle conns MiB", "peak RSS MiB",
           "soak RSS first / last / max MiB", "soak slope KiB/min"]
    out.append(("Opaque TCP, server-speaks-first, memory", hdr, rows_of(lambda r, g, gd: [
        rate_cell(g("tcp_bulk"), "gib_per_s", ".2f"), cpu_cell(g("tcp_bulk")),
        fmt(g("tcp_bulk").get("cpu_s_per_gib"), ".2f"),
        us3(g("ttfb"), unit=1, spec=".0f"), added(g("ttfb"), gd("ttfb"), unit=1, spec=".0f", keys=two),
        mib(r, "rss_idle_kib"), mib(r, "rss_1k_idle_conns_kib"), mib(r, "rss_peak_kib"),
        (" / ".join(fmt(g("soak").get(k) / 1024, ".1f") for k in ("rss_first_kib", "rss_last_kib", "rss_max_kib"))
         if g("soak").get("rss_first_kib") is not None else "—"),
        fmt(g("soak").get("slope_kib_per_min"), ".0f"),
    ])))
    out += ratio_tables(results) + rounds_table(results) + profile_tables(results) + tls_tables(results)
    # Tables with nothing measured (e.g. --tests callgrind only) are left out.
    return [t for t in out if any(c != "—" for row in t[2] for c in row[1:])]


def cpu_of():
    """What a saturating run's CPU % is a percentage of."""
    lim = ARGS.proxy_cpu_limit
    return f"of its {lim:g}-core limit, CPU µs/req absolute" if lim else "of one core"


def cpu_cell(x):
    """A saturating run's proxy CPU %, of its limit (of one core without)."""
    v = x.get("proxy_cpu_pct_of_limit", x.get("proxy_cpu_pct"))
    return fmt(v, ".0f")


def rate_cell(x, key="rps", spec=".0f"):
    """A saturating run's rate, marked when the proxy was not the bottleneck."""
    v = x.get(key)
    if v is None:
        return "—"
    b = x.get("bound")
    return format(v, spec) + (f" ({b})" if b and b != "proxy" else "")


SAT_TESTS = (("h1_sat", "HTTP/1.1 keep-alive"), ("h2_sat", "h2c"), ("grpc_sat", "gRPC unary"))
HEADROOM_WARN = 1.3  # direct should be at least this many times the best proxy


def headroom(results):
    """Per saturating test: (label, direct rps, best proxy name, its rps, ratio)."""
    out = []
    for key, label in SAT_TESTS:
        d = next((r[key].get("rps") for r in results if r["ok"] and r["target"] == "direct"
                  and isinstance(r.get(key), dict)), None)
        best = max(((r[key]["rps"], r["target"]) for r in results if r["ok"] and r["target"] != "direct"
                    and isinstance(r.get(key), dict) and r[key].get("rps")), default=None)
        if d and best:
            out.append((label, d, best[1], best[0], d / best[0]))
    return out


def ratio_tables(results):
    """Direct's headroom over the best proxy, and each target against haproxy
    (req/s and CPU per request) from CPU-bound rows only."""
    out = []
    results = [r for r in results if not r.get("tls_target")]  # tls_tables() has their own
    rows = [[label, format(d, ".0f"), f"{name} {b:.0f}", f"{ratio:.2f}×",
             "ok" if ratio >= HEADROOM_WARN else f"WARNING: under {HEADROOM_WARN}×, the load side may be the limit"]
            for label, d, name, b, ratio in headroom(results)]
    if rows:
        out.append(("Load headroom: direct ÷ the fastest proxy",
                    ["test", "direct req/s", "fastest proxy req/s", "direct ÷ fastest", ""], rows))
    ha = next((r for r in results if r["ok"] and r["target"] == "haproxy"), None)
    rows = []
    for r in results:
        if not r["ok"] or r["target"] in ("direct", "haproxy") or not ha:
            continue
        row = [r["target"]]
        for key, _ in SAT_TESTS:
            x, h = r.get(key), ha.get(key)
            if not (isinstance(x, dict) and isinstance(h, dict) and x.get("rps") and h.get("rps")):
                row += ["—", "—"]
            elif x.get("bound") != "proxy" or h.get("bound") != "proxy":
                why = ", ".join(f"{n} {b}" for n, b in ((r["target"], x.get("bound")), ("haproxy", h.get("bound")))
                                if b != "proxy")
                row += [f"— ({why})", "—"]
            else:
                row += [f"{x['rps'] / h['rps']:.2f}×",
                        f"{x['cpu_us_per_req'] / h['cpu_us_per_req']:.2f}×"]
        rows.append(row)
    if rows:
        hdr = ["target"]
        for _, label in SAT_TESTS:
            hdr += [f"{label} req/s ÷ haproxy", "CPU/req ÷ haproxy"]
        out.append(("Against haproxy (CPU-bound rows only)", hdr, rows))
    rows = []
    for r in results:
        if not r["ok"] or r["target"] == "direct":
            continue
        row = [r["target"]]
        for key in RATE_TESTS:
            x, h = r.get(key), (ha or {}).get(key)
            us = x.get("cpu_us_per_req") if isinstance(x, dict) else None
            hus = h.get("cpu_us_per_req") if isinstance(h, dict) else None
            row += [fmt(us, ".1f") if us else "—",
                    f"{us / hus:.2f}×" if us and hus and r["target"] != "haproxy" else "—"]
        rows.append(row)
    if any(any(c != "—" for c in row[1:]) for row in rows):
        hdr = ["target"]
        for key in RATE_TESTS:
            label = {"h1_lat": f"HTTP/1.1 {ARGS.h1_rate}/s", "h2_rate": f"h2c {ARGS.h2_rate}/s",
                     "grpc_rate": f"gRPC {ARGS.grpc_rate}/s"}[key]
            hdr += [f"{label} CPU µs/req", "÷ haproxy"]
        out.append(("Proxy CPU per request at a fixed rate (the same load for every proxy; "
                    "not limited by the load side)", hdr, rows))
    return out


# The fixed-rate runs, whose proxy CPU per request is compared.
RATE_TESTS = ("h1_lat", "h2_rate", "grpc_rate")


def grpc_bad(r):
    vals = [r.get(k, {}).get("grpc_not_ok") for k in ("grpc_rate", "grpc_sat") if isinstance(r.get(k), dict)]
    vals = [v for v in vals if v is not None]
    return fmt(sum(vals), ".0f") if vals else "—"


def markdown(hdr, rows):
    lines = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plain(hdr, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)]
    out = []
    for row in [hdr] + rows:
        out.append("  ".join(str(x).rjust(w) if i else str(x).ljust(w)
                             for i, (x, w) in enumerate(zip(row, widths))))
    return "\n".join(out)


def notes_of(r):
    """One line per target: errors, achieved rates, spans, caveats."""
    extra = []

    def nz(key, field, what):
        v = r.get(key, {}).get(field) if isinstance(r.get(key), dict) else None
        if v:
            extra.append(f"{key}: {v:.0f} {what}")
    if "spans_exported" in r:
        extra.append(f"spans exported {r['spans_exported']:.0f}, dropped {r['spans_dropped']:.0f}")
    if "otlp_posts" in r:
        extra.append(f"OTLP receiver got {r['otlp_posts']} POSTs, {r['otlp_bytes'] / 1e6:.1f} MB")
    for key in ("h1_lat", "grpc_rate"):
        v = r.get(key)
        if isinstance(v, dict) and v.get("rps") is not None:
            extra.append(f"{key} achieved {v['rps']:.0f} req/s")
    for key in ("h1_lat", "grpc_rate", "grpc_sat", "h1_sat", "h1close_sat", "tcp_bulk", "ttfb"):
        nz(key, "errors", "errors")
        nz(key, "unfinished", "unfinished")
        v = r.get(key)
        if isinstance(v, dict) and v.get("error_kinds"):
            extra.append(f"{key} error kinds {json.dumps(v['error_kinds'])}")
    for key in ("grpc_rate", "grpc_sat"):
        nz(key, "grpc_not_ok", "answers not gRPC OK")
    for key in ("h2_rate", "h2_sat", "tls_h1_lat", "tls_h1_sat", "tls_h2_sat", "tls_resume_sat", "tls_full_sat",
                "tls_full_rate"):
        nz(key, "failed", "failed requests")
    for key in ("tls_h1_lat", "tls_full_rate"):
        v = r.get(key)
        if isinstance(v, dict) and v.get("rps") is not None:
            extra.append(f"{key} achieved {v['rps']:.0f}/s")
    tls = sorted({f"{k}: {v['tls'].get('Cipher')}, {v['tls'].get('Application protocol')}"
                  for k, v in r.items() if k.startswith("tls_") and isinstance(v, dict) and v.get("tls")})
    if tls:
        extra.append("negotiated " + "; ".join(tls))
    s = r.get("soak")
    if isinstance(s, dict) and "keep_alive" in s:
        ka, nc = s["keep_alive"], s["new_conn"]
        # p99 is from each request's due time (open loop): a stall of the
        # machine of S s makes every connection's next 250·S requests late
        # (docs/benchmarks.md, "The 2-hop soak's p99"); the service p99
        # (from the actual send) says what the proxy itself took.
        extra.append(f"soak {s['seconds']} s on a fresh process: keep-alive {ka['rps']:.0f} req/s (p99 {ka['p99_us'] or 0:.0f} µs, "
                     f"service p99 {ka.get('svc_p99_us') or 0:.0f} µs, "
                     f"{ka['errors']} errors, {ka['unfinished']} unfinished), new-conn {nc['rps']:.0f} req/s "
                     f"({nc['errors']} errors, {nc['unfinished']} unfinished)")
    lim = [(k, r[k]) for k in ("h1_sat", "h2_sat", "grpc_sat", "tcp_bulk", "h1close_sat") + tuple(k for k, _ in TLS_SAT)
           if isinstance(r.get(k), dict) and r[k].get("cpu_limit")]
    if lim:
        extra.append(f"under a {lim[0][1]['cpu_limit']:g}-core CPU limit ({', '.join(k for k, _ in lim)}): "
                     f"CPU % of one core {' / '.join(fmt(x.get('proxy_cpu_pct'), '.0f') for _, x in lim)}, "
                     f"throttled in {' / '.join(fmt(x.get('throttled_periods_pct'), '.0f') for _, x in lim)}% "
                     "of CFS periods")
    extra += r["notes"]
    return f"- **{r['target']}** ({r['description']}): " + "; ".join(extra)


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def ver(cmd):
        try:
            o = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (o.stdout + o.stderr).strip().splitlines()[0]
        except Exception:
            return "?"
    rev = ver(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    dirty = ver(["sh", "-c", f"git -C {REPO} status --porcelain --untracked-files=no | wc -l"])
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "os": ver(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
            "l7inspect_commit": rev + ("" if dirty.strip() == "0" else " (uncommitted changes)"),
            "haproxy": ver(["haproxy", "-v"]), "nginx": ver(["nginx", "-v"]),
            "wrk": ver(["wrk", "-v"]), "h2load": ver(["h2load", "--version"])}

# -------------------------------------------------------------------- main


NETNS_ENV = "L7E2E_IN_NETNS"


def make_limit():
    try:
        return CpuLimit(ARGS.proxy_cpu_limit)
    except (CgroupError, OSError) as e:
        sys.exit(f"--proxy-cpu-limit {ARGS.proxy_cpu_limit:g}: {e} (needs root and a writable cgroup "
                 "cpu controller); run with --proxy-cpu-limit 0 for no limit")


def enter_netns():
    """Re-run this script in a private network namespace (unshare -n, only
    loopback, brought up on entry): nothing else's traffic or ports on the
    machine's loopback, and no port clash with another run. Needs root."""
    if ARGS.netns == "no":
        return
    ok = shutil.which("unshare") and subprocess.run(
        ["unshare", "-n", "true"], capture_output=True).returncode == 0
    if not ok:
        if ARGS.netns == "yes":
            sys.exit("--netns yes: `unshare -n` failed (not root?)")
        log("no private network namespace (unshare -n failed; not root?): using the host's loopback")
        return
    log("entering a private network namespace (unshare -n)")
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[NETNS_ENV] = "1"
    os.execvp("unshare", ["unshare", "-n", "--", sys.executable, os.path.abspath(__file__)]
              + sys.argv[1:] + ["--no-build"])


def ensure_tools():
    need = {"haproxy": "haproxy", "nginx": "nginx", "wrk": "wrk", "h2load": "nghttp2-client", "taskset": "util-linux"}
    tests = ARGS.tests.split(",")
    if "callgrind" in tests:
        need["valgrind"] = "valgrind"
    if "tls" in tests:
        need["openssl"] = "openssl"
    if "syscalls" in tests:
        need["perf" if shutil.which("perf") else "strace"] = "strace"  # perf if there, else strace
    missing = {pkg for tool, pkg in need.items() if shutil.which(tool) is None}
    if not any(os.path.exists(p) for p in STREAM_MODULES):
        missing.add("libnginx-mod-stream")
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    log("installing", " ".join(sorted(missing)))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(sudo + ["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-q", "--no-install-recommends"] + sorted(missing),
                   check=True, env=env)


ALL_TESTS = "mem,h1,h1close,h2,grpc,tcp,ttfb,soak"
PROFILE_TESTS = "callgrind,syscalls,rounds"  # not in the default run: --tests callgrind,syscalls
OPT_IN_TESTS = "tls"  # not in the default run either: HTTPS through the TLS targets (TLS_TARGETS)


def main():
    global ARGS, SIDECAR, L7BENCH, P, LIMIT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per measurement (default 10)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each measurement N times and report the median (all runs kept in the JSON)")
    ap.add_argument("--only", default="", help="comma-separated target names (default: all)")
    ap.add_argument("--tests", default=ALL_TESTS, help=f"comma-separated measurements (default: {ALL_TESTS}; also {PROFILE_TESTS} and {OPT_IN_TESTS}, "
                         "not in the default; tls runs the TLS targets, " + ", ".join(n for n, _, _ in TLS_TARGETS) + ")")
    ap.add_argument("--proxy-cpu", type=int, default=0, help="CPU of the proxy, alone (default 0)")
    ap.add_argument("--load-cpu", type=int, default=1, help="CPU for the load generators, backends and OTLP receiver")
    ap.add_argument("--proxy-cpu-limit", type=float, default=0.5,
                    help="CPU limit of the proxy (all its processes together) during the saturating runs, in "
                         "cores, as a Kubernetes sidecar's CPU limit: a cgroup CFS quota, unlimited during the "
                         "other runs (default 0.5; 0: no limit, the proxy may use all of its core)")
    ap.add_argument("--port-base", type=int, default=18400, help="ports used: BASE to BASE+99 (default 18400)")
    ap.add_argument("--h1-rate", type=int, default=4000, help="total req/s of the open-loop HTTP/1.1 run")
    ap.add_argument("--lat-conns", type=int, default=8, help="connections of the open-loop HTTP/1.1 run")
    ap.add_argument("--sat-conns", type=int, default=32, help="connections of the saturating HTTP/1.1 run (wrk -t1)")
    ap.add_argument("--close-conns", type=int, default=16,
                    help="concurrent connections of the new-connection-per-request run")
    ap.add_argument("--h2-conns", type=int, default=8, help="connections of the fixed-rate h2 and gRPC runs")
    ap.add_argument("--h2-sat-conns", type=int, default=10, help="connections of the saturating h2 run (h2load -c)")
    ap.add_argument("--h2-streams", type=int, default=10,
                    help="concurrent streams per connection of the saturating h2 run (h2load -m)")
    ap.add_argument("--grpc-conns", type=int, default=8, help="connections of the saturating gRPC run")
    ap.add_argument("--grpc-streams", type=int, default=16,
                    help="calls in flight per connection of the saturating gRPC run")
    ap.add_argument("--h2-rate", type=int, default=4000, help="total req/s of the fixed-rate h2 run")
    ap.add_argument("--grpc-rate", type=int, default=4000, help="total calls/s of the open-loop gRPC run")
    ap.add_argument("--tcp-streams", type=int, default=1, help="connections of the TCP bulk run")
    ap.add_argument("--ttfb-count", type=int, default=2000, help="sequential connections of the TTFB run")
    ap.add_argument("--idle-conns", type=int, default=1000)
    ap.add_argument("--soak", type=int, default=60,
                    help="seconds of constant load with RSS sampled every second, l7inspect targets (0: off)")
    ap.add_argument("--soak-rate", type=int, default=2000, help="keep-alive req/s during the soak")
    ap.add_argument("--soak-conn-rate", type=int, default=100, help="new connections/s during the soak")
    ap.add_argument("--soak-all", action="store_true", help="soak haproxy and nginx too")
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds of --tests rounds (every target once per round; default 5)")
    ap.add_argument("--profile-requests", type=int, default=5000,
                    help="measured requests per protocol of --tests callgrind (default 5000)")
    ap.add_argument("--profile-dir", default="",
                    help="keep --tests callgrind's profiles there (callgrind.TARGET.h1|h2|grpc.out, for callgrind_annotate); default: deleted")
    ap.add_argument("--profile-warmup", type=int, default=500, help="warm-up requests before them")
    ap.add_argument("--syscall-requests", type=int, default=20000,
                    help="measured requests per protocol of --tests syscalls (default 20000)")
    ap.add_argument("--profile-conns", type=int, default=8,
                    help="connections of the callgrind and syscalls runs (h2load -c; -m16 for HTTP/2)")
    ap.add_argument("--netns", choices=("auto", "yes", "no"), default="auto",
                    help="run everything in a private network namespace with only loopback "
                         "(unshare -n; needs root). auto: when possible (default)")
    ap.add_argument("--tls-burst", type=int, default=64,
                    help="--tests tls, full handshakes: connections h2load opens at once per burst (default 64)")
    ap.add_argument("--tls-conn-rate", type=int, default=500,
                    help="--tests tls: new connections/s (full handshakes) of the fixed-rate run (default 500)")
    ap.add_argument("--no-build", action="store_true", help="use the existing target/release binaries")
    ap.add_argument("--sidecar-args", default="",
                    help="more flags for every l7inspect process (e.g. --no-infer-parent, to compare two runs)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ARGS = ap.parse_args()
    if ARGS.repeat < 1:
        sys.exit("--repeat must be at least 1")
    if not 0 <= ARGS.proxy_cpu_limit <= 1:
        sys.exit("--proxy-cpu-limit must be between 0 (off) and 1 core (the proxy has one core)")
    known = ALL_TESTS + "," + PROFILE_TESTS + "," + OPT_IN_TESTS
    unknown = set(ARGS.tests.split(",")) - set(known.split(","))
    if unknown:
        sys.exit(f"--tests: unknown {sorted(unknown)}; known: {known}")
    P = {k: ARGS.port_base + off for k, off in OFFSETS.items()}

    if os.environ.get(NETNS_ENV) != "1":
        if ARGS.proxy_cpu_limit:
            make_limit().remove()  # fail now rather than after the build
        ensure_tools()
        if not ARGS.no_build:
            subprocess.run(["cargo", "build", "--release", "-q", "-p", "l7inspect-sidecar"], cwd=REPO, check=True)
            subprocess.run(["cargo", "build", "--release", "-q", "-p", "l7inspect-benches", "--bin", "l7bench"],
                           cwd=REPO, check=True)
        enter_netns()  # returns only if not entering one
    else:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    target_dir = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    SIDECAR = os.path.join(target_dir, "release", "l7inspect-sidecar")
    L7BENCH = os.path.join(target_dir, "release", "l7bench")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 16384 if hard == resource.RLIM_INFINITY else min(hard, 16384)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    if ARGS.idle_conns + 100 > max(soft, want):
        sys.exit(f"open-file limit {want} too low for {ARGS.idle_conns} idle connections")

    busy = [p for p in P.values() if not port_free(p)]
    if busy:
        sys.exit(f"ports in use on 127.0.0.1: {busy} (another run? try --port-base)")

    if ARGS.proxy_cpu_limit:
        LIMIT = make_limit()
        # Registered before stop_all, so run after it (atexit is last in,
        # first out): the group is empty when it is removed.
        atexit.register(LIMIT.remove)
        log(f"proxy CPU limit {ARGS.proxy_cpu_limit:g} core during the saturating runs: "
            f"cgroup v{LIMIT.version} {LIMIT.path}")
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        os.sched_setaffinity(0, {ARGS.load_cpu})  # this script stays off the proxy's core
    except OSError:
        pass

    tmp = tempfile.mkdtemp(prefix="l7e2e-")
    os.chmod(tmp, 0o755)  # nginx workers run as nobody
    log("work dir", tmp)

    started = datetime.datetime.now(datetime.timezone.utc)
    m = machine()  # now: the commit is the one just built, not whatever HEAD is at the end
    cfg = render("nginx-backend.conf", os.path.join(tmp, "nginx-backend.conf"),
                 DIR=tmp, H1_PORT=P["backend_h1"], H2_PORT=P["backend_h2"])
    backend = start(["nginx", "-p", tmp, "-c", cfg, "-g", "daemon off;"], ARGS.load_cpu, "nginx-backend", tmp)
    servers = start([L7BENCH, "serve", "--grpc", f"127.0.0.1:{P['backend_grpc']}",
                     "--sink", f"127.0.0.1:{P['backend_tcp']}",
                     "--banner", f"127.0.0.1:{P['backend_banner']}", "--banner-text", BANNER],
                    ARGS.load_cpu, "l7bench-serve", tmp)
    # The OTLP sink (OTLP/HTTP and OTLP/gRPC): a separate process so that its
    # CPU can be read on its own; it reads and drops bodies, cheap on CPU 1.
    receiver = start([L7BENCH, "serve", "--otlp", f"127.0.0.1:{P['otlp']}"],
                     ARGS.load_cpu, "otlp-sink", tmp)
    for k in ("h1", "h2"):
        wait_port(P[f"backend_{k}"], backend)
    for k in ("grpc", "tcp", "banner"):
        wait_port(P[f"backend_{k}"], servers)
    wait_port(P["otlp"], receiver)

    only = set(filter(None, ARGS.only.split(",")))
    results = []
    for name, desc, prefix in TARGETS:
        if only and name not in only:
            continue
        standard = set(ARGS.tests.split(",")) - {"callgrind", "rounds", "tls"}
        if not standard and not {"callgrind", "rounds"} & set(ARGS.tests.split(",")):
            continue  # --tests tls alone: only the TLS targets below
        log(f"target {name}")
        if standard:
            res = measure(name, desc, prefix, tmp)
        else:
            res = {"target": name, "description": desc, "ok": True, "error": None, "notes": []}
        if "callgrind" in ARGS.tests.split(",") and name in PROFILED:
            log(f"{name}: under callgrind")
            try:
                res["callgrind"] = callgrind_profile(name, prefix, tmp)
            except Exception as e:
                res["callgrind"] = {"error": str(e)[:300]}
                log(f"{name}: callgrind failed: {e}")
        results.append(res)
    if "tls" in ARGS.tests.split(","):
        certs = make_cert(tmp)
        for name, desc, prefix in TLS_TARGETS:
            if only and name not in only:
                continue
            log(f"target {name}")
            results.append(measure_tls(name, desc, prefix, tmp, certs))
    if "rounds" in ARGS.tests.split(","):
        log("interleaved rounds")
        rounds_profile([r for r in results if not r.get("tls_target")], tmp)
    stop_all()

    tabs = tables(results)
    finished = datetime.datetime.now(datetime.timezone.utc)
    params = {k: getattr(ARGS, k) for k in (
        "duration", "repeat", "proxy_cpu", "proxy_cpu_limit", "load_cpu", "h1_rate", "lat_conns", "sat_conns", "close_conns",
        "h2_conns", "h2_sat_conns", "h2_streams", "h2_rate", "grpc_conns", "grpc_streams", "grpc_rate",
        "tcp_streams", "ttfb_count", "idle_conns", "soak", "soak_rate", "soak_conn_rate", "tests",
        "rounds", "profile_requests", "profile_warmup", "syscall_requests", "profile_conns",
        "tls_burst", "tls_conn_rate")}
    params["netns"] = os.environ.get(NETNS_ENV) == "1"
    params["cgroup"] = f"v{LIMIT.version}, CFS period {LIMIT.PERIOD_US} µs" if LIMIT else None
    os.makedirs(ARGS.out, exist_ok=True)
    with open(os.path.join(ARGS.out, "latest.json"), "w") as f:
        json.dump({"started": started.isoformat(timespec="seconds"), "finished": finished.isoformat(timespec="seconds"),
                   "machine": m, "params": params, "results": results}, f, indent=2)
    notes = [notes_of(r) for r in results]
    md = (f"Run {started:%Y-%m-%d %H:%M} UTC, {(finished - started).seconds // 60} min; "
          f"commit {m['l7inspect_commit']}; {m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}, {m['os']}; "
          f"{m['haproxy']}; {m['nginx']}; {m['wrk']}; {m['h2load']}.\n"
          f"Parameters: {json.dumps(params)}.\n\n"
          + "\n\n".join(f"**{title}**\n\n" + markdown(hdr, rows) for title, hdr, rows in tabs)
          + "\n\n" + "\n".join(notes) + "\n")
    with open(os.path.join(ARGS.out, "latest.md"), "w") as f:
        f.write(md)
    for title, hdr, rows in tabs:
        print(f"== {title}")
        print(plain(hdr, rows))
        print()
    print("\n".join(notes))
    for label, d, best, b, ratio in headroom(results):
        if ratio < HEADROOM_WARN:
            log(f"WARNING: {label}: direct {d:.0f} req/s is only {ratio:.2f}× the fastest proxy ({best}, {b:.0f}); "
                f"the load side may be the limit")
    print(f"\nwritten: {ARGS.out}/latest.json, {ARGS.out}/latest.md")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
