#!/usr/bin/env python3
"""`make chaos`: the production shape under injected failures.

Starts, on 127.0.0.1 and free ports: Redis (AOF, appendfsync always) as the
queue, nx-27017 (a file database) as the store, the sync and async mock
vendors, one `vendorhost api` and two `vendorhost worker`s (lease 5 s,
recover_after 5 s, sweep every 1 s). It submits CHAOS_JOBS jobs (sync and async,
each with an Idempotency-Key; clients retry a failed submit with the same key
and body) in phases, and in each phase injects one failure:

  baseline          nothing
  worker-kill       SIGKILL worker-1 while it holds leases, restart it
  redis-restart     SIGKILL Redis, restart it on the same data (AOF)
  redis-wipe        SIGKILL Redis, delete its data, restart it empty
  api-kill-submit   SIGKILL the API while clients submit, restart it
  api-kill-webhook  SIGKILL the API while async callbacks arrive, restart it
                    (the async mock retries a callback 5 times over ~6 s)
  long-outage       (CHAOS_LONG=1) vendors slowed to 3 s per call, then the
                    store (or the queue) SIGKILLed for CHAOS_LONG_SECONDS, longer
                    than max_deliveries x lease (5 x 5 s), and restarted on its data
  tail              nothing

Then it waits (at most CHAOS_DEADLINE s) for every accepted job to be terminal,
waits CHAOS_SETTLE s more, reads every terminal job again and compares it with
the first terminal state it saw, re-posts every key whose submit was retried
(the answer must name the same job), and prints one table. Exit status 0 only
if every accepted job is terminal and none changed after being terminal.

Environment (all optional):
  CHAOS_JOBS=5000          jobs to submit
  CHAOS_BIN=...            vendorhost binary (default target/release/vendorhost)
  CHAOS_CLIENTS=16         concurrent submitting clients
  CHAOS_ASYNC_SHARE=0.4    share of jobs for the async vendor
  CHAOS_FAIL_SHARE=0.02    share of async jobs the vendor fails on purpose
                           (`_fault: callback_failed`), so the failed path runs
  CHAOS_DEADLINE=600       seconds to wait for all accepted jobs to be terminal
  CHAOS_SETTLE=10          seconds to wait before the final re-read
  CHAOS_LONG=1             add the long outage phase
  CHAOS_LONG_TARGET=store  `store` (nx-27017) or `queue` (Redis)
  CHAOS_LONG_SECONDS=600   its length
  CHAOS_LONG_LATENCY_MS=3000  vendor latency during the long outage phase
  CHAOS_PHASE_SECONDS=10   each phase releases its jobs over at least this long
  CHAOS_POLL_RATE=25       job reads per second while the queue holds 100+ entries
  CHAOS_VENDOR_LATENCY_MS=100  latency of each mock vendor call
  CHAOS_WORKER_SLOTS=64    jobs in flight per worker process (VENDORHOST_WORKERS)
  CHAOS_KEEP=1             keep the work directory (logs) even on success
  CHAOS_SEED=1             seed of the job mix
"""

import base64
import collections
import http.client
import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env_int(name, default):
    return int(os.environ.get(name, default))


def env_float(name, default):
    return float(os.environ.get(name, default))


JOBS = env_int("CHAOS_JOBS", 5000)
BIN = os.path.abspath(os.environ.get("CHAOS_BIN", os.path.join(ROOT, "target/release/vendorhost")))
CLIENTS = env_int("CHAOS_CLIENTS", 16)
ASYNC_SHARE = env_float("CHAOS_ASYNC_SHARE", 0.4)
FAIL_SHARE = env_float("CHAOS_FAIL_SHARE", 0.02)
DEADLINE = env_float("CHAOS_DEADLINE", 600)
SETTLE = env_float("CHAOS_SETTLE", 10)
LONG = os.environ.get("CHAOS_LONG", "0") == "1"
LONG_TARGET = os.environ.get("CHAOS_LONG_TARGET", "store")
LONG_SECONDS = env_float("CHAOS_LONG_SECONDS", 600)
LONG_LATENCY_MS = env_int("CHAOS_LONG_LATENCY_MS", 3000)
KEEP = os.environ.get("CHAOS_KEEP", "0") == "1"
SEED = env_int("CHAOS_SEED", 1)

LEASE = "5s"
RECOVER_AFTER = "5s"
SWEEP_INTERVAL = "1s"
SWEEP_AFTER = "5s"
WEBHOOK_DEADLINE = "120s"
CALLBACK_DELAY_MS = 500
# Each mock vendor takes this long per call, so workers hold leases when killed.
VENDOR_LATENCY_MS = env_int("CHAOS_VENDOR_LATENCY_MS", 100)
# Each phase releases its jobs evenly over at least this long, so the crash
# (at 30 % of the phase) falls among submits and the rest follow the restart.
PHASE_SECONDS = env_float("CHAOS_PHASE_SECONDS", 10)
# Job reads per second while the queue is not empty (the store is shared).
POLL_RATE = env_float("CHAOS_POLL_RATE", 25)
# Downtime of each injected crash before the restart.
DOWN_SECONDS = {"worker": 2.0, "redis": 2.0, "api": 1.0}
# How long one submit may keep retrying (clients give up on the key after it).
SUBMIT_BUDGET = 180.0 + (LONG_SECONDS if LONG else 0)
# A phase waits at most this long for its submits to finish.
PHASE_BUDGET = 300.0 + (LONG_SECONDS if LONG else 0)
DESIGNED_FAILURE = "vendor could not find a match"  # what the async mock says for callback_failed

T0 = time.monotonic()


def log(msg):
    print(f"[chaos {time.monotonic() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def now_iso():
    return time.strftime("%H:%M:%S")


# ------------------------------------------------------------------ processes

PDEATHSIG = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []


class Proc:
    """One child process, restartable; its output appends to one log file.

    Started only from the main thread: with `setpriv --pdeathsig` the child is
    killed if this script dies, and the signal follows the spawning thread.
    """

    ALL = []

    def __init__(self, name, argv, env, log_path):
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.p = None
        self.starts = 0
        self.cpu_done = 0.0  # CPU seconds of earlier (killed) runs
        Proc.ALL.append(self)

    def start(self):
        assert threading.current_thread() is threading.main_thread()
        out = open(self.log_path, "ab")
        out.write(f"\n==== chaos: start #{self.starts + 1} of {self.name} at {now_iso()} ====\n".encode())
        out.flush()
        self.p = subprocess.Popen(PDEATHSIG + self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)
        out.close()
        self.starts += 1
        return self

    @property
    def pid(self):
        return self.p.pid if self.p else None

    def alive(self):
        return self.p is not None and self.p.poll() is None

    def cpu_now(self):
        """CPU seconds (user + system) of the running process, 0 if gone."""
        try:
            fields = open(f"/proc/{self.p.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, AttributeError, IndexError, ValueError):
            return 0.0

    def cpu_total(self):
        return self.cpu_done + (self.cpu_now() if self.alive() else 0.0)

    def kill9(self):
        if self.alive():
            self.cpu_done += self.cpu_now()
            self.p.send_signal(signal.SIGKILL)
        if self.p is not None:
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def stop(self, grace=5.0):
        if not self.alive():
            return
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill9()

    def note(self, text):
        with open(self.log_path, "ab") as f:
            f.write(f"==== chaos: {text} at {now_iso()} ====\n".encode())


def cleanup():
    for p in reversed(Proc.ALL):
        try:
            p.stop(grace=3.0)
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


def http_get_json(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode() or "null")


def wait_until(what, pred, timeout, proc=None, interval=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{what}: process {proc.name} exited (see {proc.log_path})")
        try:
            if pred():
                return True
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(interval)
    raise RuntimeError(f"{what}: not ready after {timeout:.0f} s")


def http_ok(url):
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.status == 200


def redis_ping(port):
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")


def port_open(port):
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


# ------------------------------------------------------------------ the stack


class Stack:
    def __init__(self, work):
        self.work = work
        self.logs = os.path.join(work, "logs")
        os.makedirs(self.logs)
        self.redis_dir = os.path.join(work, "redis")
        os.makedirs(self.redis_dir)
        self.redis_port, self.nx_port = free_port(), free_port()
        self.sync_port, self.async_port = free_port(), free_port()
        self.api_port = free_port()
        self.worker_metrics = [free_port(), free_port()]
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("VENDORHOST_")}
        base_env["VENDORHOST_LOG_FORMAT"] = "json"
        base_env["VENDORHOST_LOG"] = "info"

        self.redis = Proc("redis", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                    "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                                    "--dir", self.redis_dir], base_env, self.log("redis"))
        nx = os.environ.get("NX_27017") or os.path.join(ROOT, ".venv/bin/nx-27017")
        if not os.access(nx, os.X_OK):
            nx = shutil.which("nx-27017") or nx
        self.nx = Proc("nx-27017", [nx, "--db", os.path.join(work, "store.db"), "-p", str(self.nx_port),
                                    "--log-file", self.log("nx-27017.internal"),
                                    "--pid-file", os.path.join(work, "nx-27017.pid")], base_env, self.log("nx-27017"))
        latency = ["--latency-ms", str(VENDOR_LATENCY_MS)]
        self.mock_sync = Proc("mock-sync", [BIN, "mock-vendor", "sync", "--port", str(self.sync_port)] + latency,
                              base_env, self.log("mock-sync"))
        # debug: the async mock logs each failed callback attempt (counted in the report).
        mock_env = dict(base_env, VENDORHOST_MOCK_SECRET=self.secret, VENDORHOST_LOG="info,vendorhost::mock=debug")
        self.mock_async = Proc("mock-async", [BIN, "mock-vendor", "async", "--port", str(self.async_port),
                                              "--callback-delay-ms", str(CALLBACK_DELAY_MS)] + latency, mock_env,
                               self.log("mock-async"))
        config = self.write_config()
        svc_env = dict(base_env, VENDORHOST_CONFIG=config)
        if os.environ.get("CHAOS_WORKER_SLOTS"):
            svc_env["VENDORHOST_WORKERS"] = os.environ["CHAOS_WORKER_SLOTS"]
        self.api = Proc("api", [BIN, "api"], dict(svc_env, VENDORHOST_LISTEN=f"127.0.0.1:{self.api_port}"),
                        self.log("api"))
        self.workers = [
            Proc(f"worker-{i + 1}", [BIN, "worker"],
                 dict(svc_env, VENDORHOST_METRICS_LISTEN=f"127.0.0.1:{self.worker_metrics[i]}"),
                 self.log(f"worker-{i + 1}"))
            for i in range(2)
        ]

    def log(self, name):
        return os.path.join(self.logs, f"{name}.log")

    def write_config(self):
        path = os.path.join(self.work, "vendorhost.toml")
        q = json.dumps
        text = f"""# written by scripts/chaos.py
queue = {q(f"redis://127.0.0.1:{self.redis_port}")}
store = {q(f"mongodb://127.0.0.1:{self.nx_port}/?directConnection=true")}
mongo_db = "chaos"
redis_prefix = "chaos"
plugins_dir = {q(os.path.join(ROOT, "plugins/dist"))}
cache_dir = {q(os.path.join(self.work, "cache"))}
data = {q(os.path.join(self.work, "data", "vendorhost.db"))}
public_url = {q(self.api_url)}
mocks = false

[queue_settings]
lease = "{LEASE}"
recover_after = "{RECOVER_AFTER}"
sweep_interval = "{SWEEP_INTERVAL}"
sweep_after = "{SWEEP_AFTER}"
poll = "200ms"
shutdown_grace = "2s"

# Rate limits lifted: the run measures recovery, not the limiter.
[vendor_defaults]
rate = 100000
burst = 100000
max_in_flight = 1024
backoff_max = "10s"

[vendors.sync]
allowed_hosts = [{q(f"127.0.0.1:{self.sync_port}")}]
[vendors.sync.config]
base_url = {q(f"http://127.0.0.1:{self.sync_port}")}

[vendors.async]
allowed_hosts = [{q(f"127.0.0.1:{self.async_port}")}]
webhook_secrets = [{q(self.secret)}]
webhook_deadline = "{WEBHOOK_DEADLINE}"
[vendors.async.config]
base_url = {q(f"http://127.0.0.1:{self.async_port}")}
"""
        os.makedirs(os.path.join(self.work, "data"), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    # start / ready

    def start_redis(self):
        self.redis.start()
        wait_until("redis", lambda: redis_ping(self.redis_port), 30, self.redis)

    def start_nx(self):
        self.nx.start()
        wait_until("nx-27017", lambda: port_open(self.nx_port), 60, self.nx)

    def start_api(self):
        self.api.start()
        wait_until("api /readyz", lambda: http_ok(self.api_url + "/readyz"), 120, self.api)

    def start_worker(self, i):
        w = self.workers[i]
        w.start()
        wait_until(f"{w.name} /healthz", lambda: http_ok(f"http://127.0.0.1:{self.worker_metrics[i]}/healthz"), 120, w)

    def start_all(self):
        self.start_redis()
        self.start_nx()
        self.mock_sync.start()
        self.mock_async.start()
        wait_until("mock-sync", lambda: http_ok(f"http://127.0.0.1:{self.sync_port}/healthz"), 30, self.mock_sync)
        wait_until("mock-async", lambda: http_ok(f"http://127.0.0.1:{self.async_port}/healthz"), 30, self.mock_async)
        self.start_api()
        for i in range(len(self.workers)):
            self.start_worker(i)

    def set_latency(self, latency_ms):
        for port in (self.sync_port, self.async_port):
            body = json.dumps({"fault": "none", "latency_ms": latency_ms}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/faults", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=5).read()

    def mock_stats(self, which):
        port = self.sync_port if which == "sync" else self.async_port
        return http_get_json(f"http://127.0.0.1:{port}/stats")


# ------------------------------------------------------------------ clients


class Http:
    """One keep-alive connection per thread, reopened after any error."""

    def __init__(self, port, timeout=15.0):
        self.port, self.timeout, self.conn = port, timeout, None

    def request(self, method, path, body=None, headers=None):
        reused = self.conn is not None
        try:
            return self._once(method, path, body, headers)
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # A kept-alive connection the server closed while idle (or a
            # server that just died): once more on a fresh connection, which
            # is refused if the server is really down.
            if not reused:
                raise
            return self._once(method, path, body, headers)

    def _once(self, method, path, body, headers):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            r = self.conn.getresponse()
            data = r.read()
            if r.getheader("connection", "").lower() == "close":
                self.close()
            return r.status, data
        except Exception:
            self.close()
            raise

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001
                pass
            self.conn = None


class Gate:
    """At most `rate` acquisitions per second, shared by threads; rate None = no limit."""

    def __init__(self, rate):
        self.rate, self.next, self.lock = rate, time.monotonic(), threading.Lock()

    def acquire(self):
        with self.lock:
            if self.rate is None:
                return
            now = time.monotonic()
            wait = self.next - now
            self.next = max(now, self.next) + 1.0 / self.rate
        if wait > 0:
            time.sleep(wait)


class Job:
    __slots__ = ("i", "vendor", "body", "key", "designed_fail", "phase", "request_id", "latency", "tries",
                 "answers", "accepted", "reject", "first_terminal", "final", "seen_states")

    def __init__(self, i, vendor, data, key, designed_fail):
        self.i, self.vendor, self.key, self.designed_fail = i, vendor, key, designed_fail
        self.body = json.dumps({"vendor": vendor, "data": data}, separators=(",", ":")).encode()
        self.phase = None
        self.request_id = None
        self.latency = None
        self.tries = 0
        self.answers = []  # (status or error text) of each try
        self.accepted = False
        self.reject = None
        self.first_terminal = None
        self.final = None
        self.seen_states = []


def make_jobs(run_id):
    rng = random.Random(SEED)
    jobs = []
    for i in range(JOBS):
        vendor = "async" if rng.random() < ASYNC_SHARE else "sync"
        designed = vendor == "async" and rng.random() < FAIL_SHARE
        data = {"chaos": i, "name": f"  Job {i}  ", "email": f"j{i}@example.com"}
        if designed:
            data["_fault"] = "callback_failed"
        jobs.append(Job(i, vendor, data, f"chaos-{run_id}-{i}", designed))
    return jobs


class Run:
    def __init__(self, stack, jobs):
        self.stack = stack
        self.jobs = jobs
        self.todo = queue.Queue()
        self.lock = threading.Lock()
        self.done_in_phase = collections.Counter()
        self.stop = threading.Event()
        self.phase = "setup"
        self.events = []  # (phase, text)
        self.accepted_ids = []  # indices in acceptance order, for the poller
        self.threads = []

    # submitting

    def client_loop(self):
        http_ = Http(self.stack.api_port)
        while not self.stop.is_set():
            try:
                job = self.todo.get(timeout=0.2)
            except queue.Empty:
                continue
            self.submit(http_, job)
            with self.lock:
                self.done_in_phase[job.phase] += 1
                if job.accepted:
                    self.accepted_ids.append(job.i)
        http_.close()

    def submit(self, http_, job):
        headers = {"Content-Type": "application/json", "Idempotency-Key": job.key}
        start = time.monotonic()
        backoff = 0.05
        while not self.stop.is_set():
            job.tries += 1
            try:
                status, data = http_.request("POST", "/jobs", job.body, headers)
            except Exception as e:  # noqa: BLE001 - connection refused/reset, timeout
                status, data = None, str(e)
                job.answers.append(type(e).__name__)
            else:
                job.answers.append(status)
            if status in (200, 202):
                job.request_id = json.loads(data)["request_id"]
                job.accepted = True
                job.latency = time.monotonic() - start
                return
            if status is not None and 400 <= status < 500 and status not in (408, 409, 429):
                job.reject = f"{status} {data[:200]!r}"
                return
            if time.monotonic() - start > SUBMIT_BUDGET:
                job.reject = f"gave up after {job.tries} tries: last {status or data}"
                return
            time.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    # polling

    def get_job(self, http_, job):
        try:
            status, data = http_.request("GET", f"/jobs/{job.request_id}")
        except Exception:  # noqa: BLE001 - API down: try later
            return None
        if status != 200:
            return None
        return json.loads(data)

    def record(self, job, view):
        st = view.get("status")
        if not job.seen_states or job.seen_states[-1] != st:
            job.seen_states.append(st)
        if st in ("complete", "failed") and job.first_terminal is None:
            job.first_terminal = view

    def poll_loop(self, rate):
        """Light polling while submitting: catches terminal states early."""
        http_ = Http(self.stack.api_port, timeout=5)
        pos = 0
        while not self.stop.is_set():
            with self.lock:
                ids = list(self.accepted_ids)
            open_ = [self.jobs[i] for i in ids if self.jobs[i].first_terminal is None]
            if not open_:
                time.sleep(0.2)
                continue
            pos %= len(open_)
            job = open_[pos]
            pos += 1
            view = self.get_job(http_, job)
            if view is not None:
                self.record(job, view)
            time.sleep(1.0 / rate)
        http_.close()

    # phases

    def set_phase(self, name):
        self.phase = name
        log(f"phase {name}")

    def event(self, text):
        self.events.append((self.phase, text))
        log(f"  {text}")

    def progress(self, phase, n):
        with self.lock:
            return self.done_in_phase[phase] >= n

    def wait_progress(self, phase, n, budget=PHASE_BUDGET):
        """Waits until `n` submits of the phase are answered; false (logged) after `budget` s."""
        try:
            return wait_until(f"phase {phase}: {n} submits answered", lambda: self.progress(phase, n), budget,
                              interval=0.05)
        except RuntimeError as e:
            self.event(f"gave up waiting: {e}")
            return False

    def feed(self, jobs, seconds):
        """Releases `jobs` evenly over `seconds` (on its own thread)."""
        start = time.monotonic()
        for k, job in enumerate(jobs):
            due = start + seconds * k / len(jobs)
            while not self.stop.is_set() and time.monotonic() < due:
                time.sleep(min(0.05, due - time.monotonic()))
            self.todo.put(job)

    def run_phase(self, name, jobs, action=None):
        self.set_phase(name)
        started = time.monotonic()
        for job in jobs:
            job.phase = name
        feeder = threading.Thread(target=self.feed, args=(jobs, PHASE_SECONDS), daemon=True)
        feeder.start()
        if action is not None:
            action(name, jobs, started)
        self.wait_progress(name, len(jobs))
        log(f"  {len(jobs)} submits answered in {time.monotonic() - started:.1f} s")

    def at_share(self, name, jobs, share=0.3):
        self.wait_progress(name, max(1, int(len(jobs) * share)))

    def crash_worker(self, name, jobs, started):
        self.at_share(name, jobs)
        w = self.stack.workers[0]
        w.note("SIGKILL")
        w.kill9()
        self.event(f"SIGKILL {w.name} (pid {w.p.pid}) at +{time.monotonic() - started:.1f} s")
        time.sleep(DOWN_SECONDS["worker"])
        t = time.monotonic()
        self.stack.start_worker(0)
        self.event(f"{w.name} restarted, healthy after {time.monotonic() - t:.1f} s")

    def crash_redis(self, wipe):
        def action(name, jobs, started):
            self.at_share(name, jobs)
            r = self.stack.redis
            r.note("SIGKILL" + (" + wipe" if wipe else ""))
            r.kill9()
            if wipe:
                for entry in os.listdir(self.stack.redis_dir):
                    path = os.path.join(self.stack.redis_dir, entry)
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            self.event(f"SIGKILL redis at +{time.monotonic() - started:.1f} s" + (", data deleted" if wipe else ""))
            time.sleep(DOWN_SECONDS["redis"])
            t = time.monotonic()
            self.stack.start_redis()
            self.event(f"redis restarted {'empty' if wipe else 'on its AOF'}, answering after {time.monotonic() - t:.1f} s")
        return action

    def crash_api(self, name, started, why):
        a = self.stack.api
        a.note("SIGKILL")
        a.kill9()
        self.event(f"SIGKILL api ({why}) at +{time.monotonic() - started:.1f} s")
        time.sleep(DOWN_SECONDS["api"])
        t = time.monotonic()
        self.stack.start_api()
        self.event(f"api restarted, ready after {time.monotonic() - t:.1f} s")

    def crash_api_submit(self, name, jobs, started):
        self.at_share(name, jobs)
        self.crash_api(name, started, "mid-submit")

    def crash_api_webhooks(self, name, jobs, started):
        base = self.stack.mock_stats("async")["total"]
        want = max(5, min(100, len(jobs) // 4))
        # Async calls are being made, so their callbacks (CALLBACK_DELAY_MS
        # later) are arriving while the API dies.
        try:
            wait_until("async vendor calls", lambda: self.stack.mock_stats("async")["total"] - base >= want,
                       PHASE_BUDGET, interval=0.05)
        except RuntimeError as e:
            self.event(f"gave up waiting: {e}")
        calls = self.stack.mock_stats("async")["total"] - base
        self.event(f"{calls} async vendor calls in this phase so far")
        self.crash_api(name, started, "webhooks arriving")

    def long_outage(self, name, jobs, started):
        # Slow vendors for this phase: jobs are in flight and queued when the
        # backend goes away, and stay so for the whole outage.
        self.stack.set_latency(LONG_LATENCY_MS)
        self.event(f"mock vendors answer after {LONG_LATENCY_MS} ms during this phase")
        self.at_share(name, jobs)
        target = self.stack.nx if LONG_TARGET == "store" else self.stack.redis
        target.note("SIGKILL (long outage)")
        target.kill9()
        self.event(f"SIGKILL {target.name} for {LONG_SECONDS:.0f} s at +{time.monotonic() - started:.1f} s")
        time.sleep(LONG_SECONDS)
        if target is self.stack.nx:
            self.stack.start_nx()
        else:
            self.stack.start_redis()
        self.event(f"{target.name} restarted on its data")
        self.stack.set_latency(VENDOR_LATENCY_MS)

    # the end

    def wait_terminal(self, deadline):
        """Polls every accepted job not yet seen terminal until all are or the deadline passes."""
        pending = [j for j in self.jobs if j.accepted and j.first_terminal is None]
        # The job reads share the store with the workers: while the queue
        # holds a backlog (100 entries or more) they are capped, so polling
        # does not slow the drain it waits for; below that, full speed.
        gate = Gate(POLL_RATE)

        def worker(chunk):
            http_ = Http(self.stack.api_port, timeout=10)
            while chunk and time.monotonic() < deadline:
                for job in chunk:
                    if time.monotonic() >= deadline:
                        break
                    gate.acquire()
                    view = self.get_job(http_, job)
                    if view is not None:
                        self.record(job, view)
                chunk = [j for j in chunk if j.first_terminal is None]
                if chunk:
                    time.sleep(0.5)
            http_.close()

        n = 4
        chunks = [pending[k::n] for k in range(n)]
        threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in chunks]
        last = time.monotonic()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(1)
            depth = self.queue_depth()
            gate.rate = POLL_RATE if depth is None or depth >= 100 else None
            if time.monotonic() - last >= 10:
                last = time.monotonic()
                left = sum(1 for j in self.jobs if j.accepted and j.first_terminal is None)
                log(f"  {left} accepted jobs not seen terminal yet; queue depth {depth}")
        return [j for j in self.jobs if j.accepted and j.first_terminal is None]

    def queue_depth(self):
        """Ready + delayed + leased entries, from the API's /metrics; None if unreadable."""
        try:
            with urllib.request.urlopen(self.stack.api_url + "/metrics", timeout=5) as r:
                text = r.read().decode()
        except Exception:  # noqa: BLE001 - API restarting
            return None
        return int(sum(float(line.split()[-1]) for line in text.splitlines()
                       if line.startswith("vendorhost_queue_depth{")))

    def reread_all(self):
        """Reads every accepted job once more (final state)."""
        todo = queue.Queue()
        for j in self.jobs:
            if j.accepted:
                todo.put(j)

        def worker():
            http_ = Http(self.stack.api_port, timeout=10)
            while True:
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    break
                for _ in range(5):
                    view = self.get_job(http_, job)
                    if view is not None:
                        job.final = view
                        self.record(job, view)
                        break
                    time.sleep(0.5)
            http_.close()

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def recheck_keys(self):
        """Re-posts every key whose submit needed more than one try; the answer must name the same job."""
        retried = [j for j in self.jobs if j.accepted and j.tries > 1]
        mismatched = []
        http_ = Http(self.stack.api_port, timeout=10)
        headers = lambda j: {"Content-Type": "application/json", "Idempotency-Key": j.key}  # noqa: E731
        for j in retried:
            for _ in range(5):
                try:
                    status, data = http_.request("POST", "/jobs", j.body, headers(j))
                except Exception:  # noqa: BLE001
                    time.sleep(0.5)
                    continue
                if status in (200, 202):
                    rid = json.loads(data)["request_id"]
                    if status != 200 or rid != j.request_id:
                        mismatched.append((j, status, rid))
                    break
                time.sleep(0.5)
        http_.close()
        return retried, mismatched


# ------------------------------------------------------------------ report


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(p / 100.0 * len(v) + 0.5)) - 1))
    return v[k]


def ms(v):
    if v is None:
        return "n/a"
    v *= 1000
    if v >= 1000:
        return f"{v / 1000:.2f} s"
    return f"{v:.1f} ms" if v >= 10 else f"{v:.2f} ms"


def read_logs(work):
    """Per vendorhost process: ERROR and WARN counts, panics, and the count of
    each distinct (level, message); the whole summary goes to logs-summary.txt."""
    counts, messages = {}, {}
    for p in Proc.ALL:
        if p.name in ("redis", "nx-27017"):
            continue
        c = collections.Counter()
        m = collections.Counter()
        try:
            lines = open(p.log_path, errors="replace").read().splitlines()
        except OSError:
            continue
        for line in lines:
            if "panicked at" in line:
                c["panic"] += 1
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            level = rec.get("level", "?")
            c[level] += 1
            if level in ("ERROR", "WARN"):
                fields = rec.get("fields", {})
                msg = fields.get("message", "?")
                err = fields.get("error") or fields.get("reason")
                m[(level, msg + (f" ({str(err)[:80]})" if err else ""))] += 1
        counts[p.name], messages[p.name] = c, m
    with open(os.path.join(work, "logs-summary.txt"), "w") as f:
        for name, m in messages.items():
            f.write(f"{name}:\n")
            for (level, msg), n in m.most_common():
                f.write(f"  {n:>6} {level:<5} {msg}\n")
    return counts, messages


def report(run, stack, phases, t_submit_end, t_terminal, not_terminal, retried, mismatched, sync_stats, async_stats):
    jobs = run.jobs
    acc = [j for j in jobs if j.accepted]
    lines = []
    w = lines.append
    binary = BIN_SHOWN[0] or BIN
    w(f"vendorhost chaos run: {len(jobs):,} jobs ({sum(j.vendor == 'sync' for j in jobs):,} sync, "
      f"{sum(j.vendor == 'async' for j in jobs):,} async, {sum(j.designed_fail for j in jobs)} of them failed by the "
      f"vendor on purpose), {CLIENTS} clients")
    w(f"shape: api + 2 workers ({binary}), Redis {redis_version()} (AOF, appendfsync always), nx-27017 "
      f"(file db) as MongoDB, mock vendors as processes; lease {LEASE}, recover_after {RECOVER_AFTER}, "
      f"sweep_interval {SWEEP_INTERVAL}, sweep_after {SWEEP_AFTER}, webhook_deadline {WEBHOOK_DEADLINE}")
    w(f"machine: {os.cpu_count()} CPU(s), load average {' '.join(open('/proc/loadavg').read().split()[:3])} at the end")
    w("")
    w(f"  {'phase':<18}{'jobs':>6}{'accepted':>10}{'retried':>9}{'submit p50':>12}{'p99':>11}{'max':>11}   injected")
    for name, _ in phases:
        pj = [j for j in jobs if j.phase == name]
        lat = [j.latency for j in pj if j.accepted]
        ev = "; ".join(t for ph, t in run.events if ph == name and t.startswith("SIGKILL")) or "-"
        w(f"  {name:<18}{len(pj):>6,}{sum(j.accepted for j in pj):>10,}{sum(j.tries > 1 for j in pj):>9,}"
          f"{ms(pct(lat, 50)):>12}{ms(pct(lat, 99)):>11}{ms(max(lat) if lat else None):>11}   {ev}")
    w("")
    complete = [j for j in acc if j.final and j.final.get("status") == "complete"]
    failed = [j for j in acc if j.final and j.final.get("status") == "failed"]
    reasons = collections.Counter((j.final.get("error") or "?") for j in failed)
    changed = [j for j in acc if j.first_terminal and j.final and changed_after(j)]
    unread = [j for j in acc if j.final is None]
    w(f"  {'accepted':<34}{len(acc):>7,} of {len(jobs):,} ({sum(1 for j in acc if j.tries > 1):,} after a retry)")
    rejected = [j for j in jobs if not j.accepted]
    if rejected:
        w(f"  {'not accepted':<34}{len(rejected):>7,}   e.g. {rejected[0].key}: {rejected[0].reject}")
    w(f"  {'complete':<34}{len(complete):>7,}")
    w(f"  {'failed':<34}{len(failed):>7,}")
    for reason, n in reasons.most_common():
        tag = "  (designed: vendor callback_failed)" if DESIGNED_FAILURE in reason else ""
        w(f"      {n:>6,}  {reason[:110]}{tag}")
    unexpected = [j for j in failed if not (j.designed_fail and DESIGNED_FAILURE in (j.final.get("error") or ""))]
    wrong_ok = [j for j in complete if j.designed_fail]
    if unexpected or wrong_ok:
        w(f"  {'failed, not designed to':<34}{len(unexpected):>7,}")
        w(f"  {'complete, designed to fail':<34}{len(wrong_ok):>7,}")
    still = [j for j in acc if j.final and j.final.get("status") not in ("complete", "failed")]
    late = len(not_terminal) - len([j for j in not_terminal if j in still])
    w(f"  {'non-terminal at the deadline':<34}{len(not_terminal):>7,}" +
      (f"   ({late:,} terminal by the final read, {len(still):,} still not)" if not_terminal else ""))
    w(f"  {'changed after being terminal':<34}{len(changed):>7,}")
    if unread:
        w(f"  {'unreadable at the end':<34}{len(unread):>7,}")
    w(f"  {'Idempotency-Key re-posts':<34}{len(retried):>7,}   {len(mismatched)} answered another job or 202")
    ns, na = sum(j.vendor == "sync" for j in acc), sum(j.vendor == "async" for j in acc)
    att_s = sum(j.final.get("attempts", 0) for j in acc if j.final and j.vendor == "sync")
    att_a = sum(j.final.get("attempts", 0) for j in acc if j.final and j.vendor == "async")
    w(f"  {'vendor calls per job (mocks)':<34}   sync {ratio(sync_stats['total'], ns)} ({sync_stats['total']:,} calls, "
      f"{ns:,} jobs); async {ratio(async_stats['total'], na)} ({async_stats['total']:,} calls, {na:,} jobs)")
    w(f"  {'attempts per job (store)':<34}   sync {ratio(att_s, ns)}; async {ratio(att_a, na)}; "
      f"distribution {dict(sorted(collections.Counter(j.final.get('attempts') for j in acc if j.final).items()))}")
    w(f"  {'time':<34}   submits {t_submit_end:.0f} s; all seen terminal "
      f"{'at ' + format(t_terminal, '.0f') + ' s' if t_terminal else 'NOT by the deadline'} (from the first submit)")
    counts, messages = read_logs(stack.work)
    wall = time.monotonic() - T0
    me = os.times()
    cpu = sorted([(p.name, p.cpu_total()) for p in Proc.ALL] + [("chaos.py", me.user + me.system)],
                 key=lambda kv: -kv[1])
    w(f"  {'CPU, % of one core over ' + format(wall, '.0f') + ' s':<34}   " +
      ", ".join(f"{n} {100 * c / wall:.0f}%" for n, c in cpu if c > 0))
    w(f"  {'log lines ERROR / WARN / panics':<34}   " +
      ", ".join(f"{k} {c['ERROR']}/{c['WARN']}/{c['panic']}" for k, c in counts.items()))
    cb = messages.get("mock-async", collections.Counter())
    failed_cb = sum(1 for line in open(stack.mock_async.log_path, errors="replace") if "mock callback failed" in line)
    given_up = sum(n for (lv, msg), n in cb.items() if msg.startswith("mock callback given up"))
    w(f"  {'async callbacks (mock)':<34}   {failed_cb:,} attempts failed and were retried or dropped, "
      f"{given_up:,} given up after every retry")
    ok = not not_terminal and not changed and not unread and not rejected
    details = []
    listed = []
    for title, lst in (("non-terminal", not_terminal), ("changed after terminal", changed),
                       ("failed, not designed to", unexpected), ("complete, designed to fail", wrong_ok),
                       ("not accepted", rejected)):
        listed.extend((title, j) for j in lst[:20])
    trails = log_trails([j.request_id for _, j in listed if j.request_id])
    for title, j in listed:
        details.append(f"  {title}: {j.request_id or j.key} ({j.vendor}, phase {j.phase}, submit tries "
                       f"{j.tries}: {j.answers[:6]}) seen {j.seen_states} first terminal "
                       f"{brief(j.first_terminal)} final {brief(j.final)}")
        if j.request_id in trails:
            details.append(f"      logs: {trails[j.request_id]}")
    for j, status, rid in mismatched[:20]:
        details.append(f"  key {j.key}: first answer {j.request_id}, re-post {status} {rid}")
    if details:
        w("")
        w("Jobs to look at (at most 20 per kind):")
        lines.extend(details)
    w("")
    verdict = "PASS: every accepted job terminal, none changed after" if ok else "FAIL"
    if unexpected:
        why = collections.Counter(j.final.get("error") for j in unexpected)
        verdict += "; failed though not designed to: " + ", ".join(f"{n} {r!r}" for r, n in why.most_common())
    w("RESULT: " + verdict)
    return "\n".join(lines), ok


def log_trails(request_ids):
    """For each request id: which process logged what about it (message counts, first and last time)."""
    want = set(request_ids)
    seen = collections.defaultdict(lambda: collections.defaultdict(collections.Counter))
    span = collections.defaultdict(dict)
    if not want:
        return {}
    for p in Proc.ALL:
        try:
            lines = open(p.log_path, errors="replace")
        except OSError:
            continue
        for line in lines:
            if '"request_id"' not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            rid = rec.get("fields", {}).get("request_id") or (rec.get("span") or {}).get("request_id")
            if rid not in want:
                continue
            seen[rid][p.name][rec.get("fields", {}).get("message", "?")] += 1
            t = rec.get("timestamp", "")[11:19]
            first, _ = span[rid].get(p.name, (t, t))
            span[rid][p.name] = (first, t)
    out = {}
    for rid, procs in seen.items():
        parts = []
        for name, msgs in procs.items():
            first, last = span[rid][name]
            parts.append(f"{name} {first}-{last}: " + ", ".join(f"{n}x {m}" for m, n in msgs.most_common(4)))
        out[rid] = "; ".join(parts)
    return out


def changed_after(j):
    a, b = j.first_terminal, j.final
    return any(a.get(k) != b.get(k) for k in ("status", "updated_at", "result", "error"))


def brief(view):
    if not view:
        return "-"
    s = f"{view.get('status')} at {view.get('updated_at')} attempts {view.get('attempts')}"
    if view.get("error"):
        s += f" error {view['error'][:120]!r}"
    return s


def ratio(a, b):
    return f"{a / b:.3f}" if b else "n/a"


BIN_SHOWN = [""]


def binary_age():
    """When the binary was built, and whether a source file is newer."""
    built = os.path.getmtime(BIN)
    newest, newest_path = 0.0, ""
    for top in ("host/src", "tools", "wit"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                m = os.path.getmtime(os.path.join(dirpath, f))
                if m > newest:
                    newest, newest_path = m, os.path.join(dirpath, f)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(built))
    if newest > built:
        return f"built {when}, OLDER than {os.path.relpath(newest_path, ROOT)}"
    return f"built {when}, newer than every source"


def redis_version():
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=5).stdout
        return out.split("v=")[1].split()[0]
    except Exception:  # noqa: BLE001
        return "?"


# ------------------------------------------------------------------ main


def main():
    global BIN
    for tool in ("redis-server",):
        if not shutil.which(tool):
            sys.exit(f"chaos: needs {tool} (make test-deps installs it)")
    if not os.access(BIN, os.X_OK):
        sys.exit(f"chaos: no {BIN}: run `make build` (or set CHAOS_BIN)")
    if not os.path.exists(os.path.join(ROOT, "plugins/dist/sync.wasm")):
        sys.exit("chaos: no plugins/dist/sync.wasm: run `make build-plugins`")
    work = tempfile.mkdtemp(prefix="vendorhost-chaos.")
    ok = False
    try:
        # A private copy: a rebuild during the run must not change what a
        # restarted process runs.
        note = binary_age()
        copy = os.path.join(work, "vendorhost")
        shutil.copy2(BIN, copy)
        BIN_SHOWN[0] = f"{os.path.relpath(BIN, ROOT)}, {note}"
        BIN = copy
        stack = Stack(work)
        log(f"work directory {work}; binary {BIN}")
        stack.start_all()
        log(f"up: api {stack.api_url}, redis :{stack.redis_port}, nx-27017 :{stack.nx_port}, "
            f"mocks :{stack.sync_port} (sync) :{stack.async_port} (async)")
        run_id = f"{int(time.time())}-{os.getpid()}"
        jobs = make_jobs(run_id)
        run = Run(stack, jobs)
        for _ in range(CLIENTS):
            t = threading.Thread(target=run.client_loop, daemon=True)
            t.start()
            run.threads.append(t)
        poller = threading.Thread(target=run.poll_loop, args=(POLL_RATE,), daemon=True)
        poller.start()

        # Phases: (name, action, share of the jobs).
        plan = [("baseline", None, 0.15), ("worker-kill", run.crash_worker, 0.15),
                ("redis-restart", run.crash_redis(False), 0.15), ("redis-wipe", run.crash_redis(True), 0.15),
                ("api-kill-submit", run.crash_api_submit, 0.15), ("api-kill-webhook", run.crash_api_webhooks, 0.15)]
        if LONG:
            plan.append(("long-outage", run.long_outage, 0.05))
        used = sum(s for _, _, s in plan)
        plan.append(("tail", None, max(0.0, 1.0 - used)))
        # The webhook phase submits async jobs only, so callbacks are arriving.
        async_jobs = [j for j in jobs if j.vendor == "async"]
        sizes = [int(round(s * len(jobs))) for _, _, s in plan]
        sizes[-1] = len(jobs) - sum(sizes[:-1])
        wh = [k for k, (n, _, _) in enumerate(plan) if n == "api-kill-webhook"][0]
        taken = set()
        picks = {}
        pick_async = async_jobs[:sizes[wh]]
        picks[wh] = pick_async
        taken.update(j.i for j in pick_async)
        rest = [j for j in jobs if j.i not in taken]
        pos = 0
        for k in range(len(plan)):
            if k == wh:
                continue
            picks[k] = rest[pos:pos + sizes[k]]
            pos += sizes[k]
        t_start = time.monotonic()
        for k, (name, action, _) in enumerate(plan):
            if picks[k]:
                run.run_phase(name, picks[k], action)
        t_submit_end = time.monotonic() - t_start

        log(f"all submits answered; waiting up to {DEADLINE:.0f} s for every accepted job to be terminal")
        deadline = time.monotonic() + DEADLINE
        not_terminal = run.wait_terminal(deadline)
        t_terminal = None if not_terminal else time.monotonic() - t_start
        run.stop.set()
        log(f"{len(not_terminal)} not terminal; settling {SETTLE:.0f} s, then reading every job again")
        time.sleep(SETTLE)
        run.reread_all()
        retried, mismatched = run.recheck_keys()
        sync_stats, async_stats = stack.mock_stats("sync"), stack.mock_stats("async")
        phases = [(n, a) for k, (n, a, _) in enumerate(plan) if picks[k]]
        text, ok = report(run, stack, phases, t_submit_end, t_terminal, not_terminal, retried, mismatched,
                          sync_stats, async_stats)
        print(text, flush=True)
        with open(os.path.join(work, "report.txt"), "w") as f:
            f.write(text + "\n")
        dump = [{"key": j.key, "vendor": j.vendor, "phase": j.phase, "request_id": j.request_id, "tries": j.tries,
                 "answers": j.answers, "latency_s": j.latency, "seen": j.seen_states, "first_terminal": j.first_terminal,
                 "final": j.final, "designed_fail": j.designed_fail, "reject": j.reject} for j in jobs]
        with open(os.path.join(work, "jobs.json"), "w") as f:
            json.dump(dump, f)
    finally:
        cleanup()
        if BIN.startswith(work):
            os.remove(BIN)  # the private copy (~200 MB); the logs stay
        if ok and not KEEP:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work directory kept: {work} (logs/, jobs.json, report.txt)")
    return 0 if ok else 1


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    # Also when started in the background, where SIGINT arrives ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped")
        sys.exit(130)
    except RuntimeError as e:
        log(f"error: {e}")
        sys.exit(2)
