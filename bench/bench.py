#!/usr/bin/env python
"""Load-test mlapi under gunicorn beside a bare Flask app and the FastAPI tutorial.

Run through ``bench/run`` (it prepares the venv, wrk and redis-server); bench/README.md
explains the method. mlapi is driven only over HTTP and its command line, so the bench
does not depend on where its modules live.
"""

import argparse
import contextlib
import json
import math
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent
LUA = BENCH / "wrk" / "case.lua"
MIB = 1024 * 1024

SINGLE = [1.0, 2.0, 3.0, 4.0]
BIG_FEATURES = 3_000  # a logistic model of 3,000 weights: a large body, cheap arithmetic
# The >= 1 ms model of the cache goal: an ONNX network of SLOW_LAYERS 1024-wide layers (one
# shared 4 MiB weight matrix), served by a second mlapi with a repository of its own, so that
# onnxruntime's memory stays out of the RSS goal, which is about a worker with the built-ins.
SLOW_WIDTH, SLOW_LAYERS = 1024, 64
MONITORED_REQUESTS = 20  # sequential requests whose Redis calls MONITOR counts
# A new connection's handshake: counted apart from the requests' round trips (a worker
# thread's first request opens its connection; later ones reuse it).
CONNECTION_SETUP = {"HELLO", "CLIENT", "SELECT", "AUTH"}

# How each server runs: the repository's gunicorn.conf.py for all three (workers, threads,
# keep-alive, logging); the tutorial with uvicorn's worker class, as FastAPI deploys it.
SERVERS = {
    "mlapi": ["wsgi:app"],
    "models": ["wsgi:app"],  # mlapi with MLAPI_MODEL_DIR holding the slow ONNX model
    "bare": ["--pythonpath", "bench", "bare_app:app"],
    "tutorial": [
        "--pythonpath",
        "bench",
        "--worker-class",
        "uvicorn_worker.UvicornWorker",
        "tutorial_app:app",
    ],
}


def oip(values):
    """An Open Inference Protocol request of one FP64 row."""
    return {
        "inputs": [
            {"name": "features", "shape": [1, len(values)], "datatype": "FP64", "data": values}
        ]
    }


BIG_ROW = [round(x, 6) for x in np.random.default_rng(2).uniform(-1, 1, BIG_FEATURES).tolist()]

# case: (title, method, path, body, servers); the bare app answers a constant to every POST.
CASES = {
    "health": ("GET /health/live", "GET", "/health/live", None, ("mlapi", "bare", "tutorial")),
    "predict": (
        "POST /v1/predict, 4 features, JWT (bare: no JWT)",
        "POST",
        "/v1/predict",
        SINGLE,
        ("mlapi", "bare", "tutorial"),
    ),
    "cached": (
        "POST /predict-cached, cache hit, JWT",
        "POST",
        "/predict-cached",
        SINGLE,
        ("mlapi", "tutorial"),
    ),
    "infer": (
        "POST /v2/models/average/infer, FP64 [1,4], JWT",
        "POST",
        "/v2/models/average/infer",
        oip(SINGLE),
        ("mlapi",),
    ),
    "infer-big": (
        f"POST /v2/models/big/infer, logistic, FP64 [1,{BIG_FEATURES:,}], JWT",
        "POST",
        "/v2/models/big/infer",
        oip(BIG_ROW),
        ("mlapi",),
    ),
}
CASES["cached-slow"] = (
    "POST /predict-cached?model=slow, cache hit, JWT (slow: ONNX, >= 1 ms)",
    "POST",
    "/predict-cached?model=slow",
    SINGLE,
    ("models",),
)
CASES["infer-slow"] = (
    "POST /v2/models/slow/infer, FP32 [1,4], JWT (computed every time)",
    "POST",
    "/v2/models/slow/infer",
    {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": SINGLE}]},
    ("models",),
)
AUTHENTICATED = {"predict", "cached", "infer", "infer-big", "cached-slow", "infer-slow"}
BARE_REFERENCE = {"health": "health", "predict": "predict", "cached": "predict"}

CONFIGS = {
    "embedded": "no MLAPI_REDIS_URL, SQLite: limits, cache and revocations in process memory; "
    "1 worker",
    "redis": "scale-out: MLAPI_REDIS_URL and MLAPI_DATABASE_URL of the bench's own redis-server "
    "and PostgreSQL (SQLite where PostgreSQL is not installed), WEB_CONCURRENCY=2",
}
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name, default=None)


# --- processes ---------------------------------------------------------------------


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(url, data=None, headers=None, method=None, timeout=10):
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class Process:
    """A child process we started in its own session, with its output in a file."""

    def __init__(self, name, cmd, env, workdir):
        self.name = name
        self.log_path = workdir / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def check_alive(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log_path}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class RedisServer(Process):
    """A private redis-server: its command counter and CPU are the servers' alone."""

    def __init__(self, workdir):
        self.port = free_port()
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
        super().__init__("redis-server", cmd, os.environ, workdir)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis(port=self.port, socket_timeout=5)
        for _ in range(100):
            self.check_alive()
            with contextlib.suppress(redis.ConnectionError):
                self.client.ping()
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer; see {self.log_path}")

    def commands(self):
        """Commands processed so far, scripts' inner commands included, this call excluded."""
        return self.client.info("stats")["total_commands_processed"]

    def cpu_seconds(self):
        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def calls_per_request(self, send, requests=MONITORED_REQUESTS):
        """Commands clients sent per request (round trips; scripts' inner ones apart), by name."""
        marker = secrets.token_hex(8)
        calls, inner, setup = Counter(), Counter(), Counter()
        with self.client.monitor() as monitor:
            for _ in range(requests):
                send()
            self.client.echo(marker)
            while True:
                command = monitor.next_command()
                if marker in command["command"]:
                    break
                name = command["command"].split(" ", 1)[0].upper()
                kind = inner if command["client_type"] == "lua" else calls
                kind = setup if name in CONNECTION_SETUP else kind
                kind[name] += 1
        return {
            "calls": sum(calls.values()) / requests,
            "by_command": {name: n / requests for name, n in calls.most_common()},
            "inside_scripts": {name: n / requests for name, n in inner.most_common()},
            "connection_setup": dict(setup),
        }


class PostgresServer(Process):
    """A private PostgreSQL with pg_stat_statements: its statements are mlapi's alone."""

    def __init__(self, workdir, bindir):
        self.port = free_port()
        # initdb and postgres refuse to run as root: run them as the postgres user, in a
        # folder of their own (the bench's work folder is readable by root only).
        self.data = Path(tempfile.mkdtemp(prefix="mlapi-bench-pg-"))
        as_owner = []
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres", "postgres")
            as_owner = ["runuser", "-u", "postgres", "--"]
        self.pg_ctl = [*as_owner, str(bindir / "pg_ctl"), "-D", str(self.data / "db")]
        subprocess.run(
            [*as_owner, str(bindir / "initdb"), "-D", str(self.data / "db"), "-U", "postgres"]
            + ["--auth=trust", "--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.data),
            "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.track_utility": "off",  # BEGIN, ROLLBACK: not queries
        }
        cmd = [
            *as_owner,
            str(bindir / "postgres"),
            "-D",
            str(self.data / "db"),
            "-p",
            str(self.port),
        ]
        cmd += [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
        super().__init__("postgres", cmd, os.environ, workdir)
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        for _ in range(200):
            self.check_alive()
            with contextlib.suppress(psycopg.OperationalError):
                self.conn = psycopg.connect(
                    f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True
                )
                self.conn.execute("CREATE EXTENSION pg_stat_statements")
                return
            time.sleep(0.05)
        raise RuntimeError(f"postgres did not answer; see {self.log_path}")

    def statements(self):
        """Statements run so far by others than the bench, by text (pg_stat_statements)."""
        rows = self.conn.execute(
            "SELECT query, calls FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_%'"
        ).fetchall()
        return Counter({query: calls for query, calls in rows})

    def cpu_seconds(self):
        """CPU of the postmaster and its live backends."""
        total = 0.0
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.proc.pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    total += times.user + times.system
        return total

    def stop(self):
        with contextlib.suppress(Exception):
            self.conn.close()
        subprocess.run([*self.pg_ctl, "stop", "-m", "fast"], capture_output=True, timeout=60)
        super().stop()
        shutil.rmtree(self.data, ignore_errors=True)


class Server(Process):
    """A gunicorn master serving one of SERVERS."""

    def __init__(self, kind, config, env, workers, workdir):
        self.kind = kind
        self.workers_expected = workers
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(env, GUNICORN_BIND=f"127.0.0.1:{self.port}")
        env["PROMETHEUS_MULTIPROC_DIR"] = str(workdir / f"prometheus-{kind}")
        os.makedirs(env["PROMETHEUS_MULTIPROC_DIR"])
        cmd = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", *SERVERS[kind]]
        super().__init__(f"{kind}-{config}", cmd, env, workdir)

    def wait_ready(self, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(OSError):
                status, _ = http(self.base + "/health/live", timeout=1)
                if status == 200 and len(self.workers()) >= self.workers_expected:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout}s; see {self.log_path}")

    def workers(self):
        try:
            return psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []

    def token(self, username, password):
        form = urllib.parse.urlencode({"username": username, "password": password}).encode()
        status, raw = http(self.base + "/token", data=form)
        if status != 200:
            raise RuntimeError(f"{self.name}: POST /token answered {status}: {raw[:300]!r}")
        return json.loads(raw)["access_token"]


# --- measurement -------------------------------------------------------------------


class WorkerSampler(threading.Thread):
    """Peak RSS and CPU time of a server's workers, sampled every 0.1 s until finish()."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server = server
        self.peak_rss, self.cpu_start, self.cpu_last = {}, {}, {}
        self.halt = threading.Event()
        self.sample()
        self.start()

    def sample(self):
        for proc in self.server.workers():
            try:
                with proc.oneshot():
                    rss, times = proc.memory_info().rss, proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            self.peak_rss[proc.pid] = max(self.peak_rss.get(proc.pid, 0), rss)
            self.cpu_start.setdefault(proc.pid, times.user + times.system)
            self.cpu_last[proc.pid] = times.user + times.system

    def run(self):
        while not self.halt.wait(0.1):
            self.sample()

    def finish(self):
        self.halt.set()
        self.join()
        self.sample()
        return {pid: self.cpu_last[pid] - self.cpu_start[pid] for pid in self.cpu_last}

    def pss(self):
        """The largest proportional set size of a worker now: its private pages plus its
        share of those it shares with the master and the other workers."""
        sizes = []
        for proc in self.server.workers():
            with contextlib.suppress(psutil.Error):
                sizes.append(proc.memory_full_info().pss)
        return max(sizes, default=0)


def wrk(url, seconds, connections, env, result_file):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout=10s", "-s", str(LUA), url]
    env = dict(os.environ, **env, BENCH_RESULT=str(result_file))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0 or not result_file.exists():
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return json.loads(result_file.read_text())


def own_cpu_seconds():
    """CPU seconds of the bench and its finished children (wrk, py-spy)."""
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )


def machine_busy_seconds():
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def measure(server, url, wrk_env, args, result_file, backing, profile_to):
    """One measured wrk run: throughput, latency, worker CPU and RSS, Redis commands."""
    redis_server, postgres = backing.get("redis"), backing.get("postgres")
    sampler = WorkerSampler(server)
    busy, own = machine_busy_seconds(), own_cpu_seconds()
    commands = redis_server.commands() if redis_server else None
    redis_cpu = redis_server.cpu_seconds() if redis_server else None
    statements = postgres.statements() if postgres else None
    postgres_cpu = postgres.cpu_seconds() if postgres else None
    spy = None
    if profile_to:  # py-spy's own output, for speedscope; it costs the workers CPU too
        spy = subprocess.Popen(
            ["py-spy", "record", "--pid", str(server.proc.pid), "--subprocesses", "--gil"]
            + ["--rate", "250", "--duration", str(args.duration), "--nonblocking"]
            + ["--format", "speedscope", "--output", str(profile_to)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    out = wrk(url, args.duration, args.connections, wrk_env, result_file)
    if redis_server:
        commands = redis_server.commands() - commands - 1  # less the first INFO
        redis_cpu = redis_server.cpu_seconds() - redis_cpu
    if postgres:
        statements = postgres.statements() - statements
        postgres_cpu = postgres.cpu_seconds() - postgres_cpu
    cpu = sampler.finish()
    if spy:
        spy.wait(timeout=60)
    # Whatever else ran on the machine meanwhile (other people's work): the run's noise.
    others = machine_busy_seconds() - busy - (own_cpu_seconds() - own) - sum(cpu.values())
    others -= (redis_cpu or 0.0) + (postgres_cpu or 0.0)
    seconds = out["duration_us"] / 1e6
    requests = max(out["requests"], 1)
    result = {
        "requests": out["requests"],
        "rps": round(out["requests"] / seconds, 1),
        "latency_ms": {
            k: round(out["latency_us"][k] / 1000, 2) for k in ("p50", "p90", "p99", "max")
        },
        "non2xx": out["non2xx"],
        "non2xx_by_status": out["non2xx_by_status"],
        "first_non2xx_body": out["first_non2xx_body"],
        "socket_errors": sum(out["socket_errors"].values()),
        "cpu_ms_per_request": round(sum(cpu.values()) * 1000 / requests, 3),
        "worker_cores": [round(c / seconds, 2) for c in cpu.values()],
        "rss_peak_mib": round(max(sampler.peak_rss.values(), default=0) / MIB, 1),
        "pss_end_mib": round(sampler.pss() / MIB, 1),
        "workers_seen": len(cpu),
        "others_cores": round(max(others, 0.0) / seconds, 2),
    }
    if redis_server:
        result["redis_commands_per_request"] = round(commands / requests, 2)
        result["redis_cpu_ms_per_request"] = round(redis_cpu * 1000 / requests, 3)
    if postgres:
        result["sql_statements_per_request"] = round(statements.total() / requests, 3)
        result["sql_statements_per_second"] = round(statements.total() / seconds, 2)
        result["sql_statements_total"] = statements.total()
        result["seconds"] = round(seconds, 3)
        result["sql_statements"] = {
            " ".join(query.split())[:160]: round(n / requests, 3)
            for query, n in statements.most_common(5)
        }
        result["postgres_cpu_ms_per_request"] = round(postgres_cpu * 1000 / requests, 3)
    return result


def unbalanced(result, workers):
    """True when the keep-alive connections all landed on one of several workers."""
    cores = sorted(result["worker_cores"], reverse=True)[:workers]
    return workers > 1 and sum(cores) > 0 and min(cores) < 0.2 * sum(cores)


def expected_answer(case, kind, answer):
    """What a 2xx must say; None when it is right."""
    if kind == "bare" or case in ("infer-big", "infer-slow"):
        return None if isinstance(answer, dict) else "not a JSON object"
    if case == "cached-slow":
        return None if answer.get("cached") is True else "a repeated request was not a cache hit"
    if case == "health":
        return None if answer.get("status") == "alive" else f"unexpected {answer}"
    if case == "infer":
        value = answer.get("outputs", [{}])[0].get("data")
        return None if value == [2.5] else f"outputs {value!r}, expected [2.5]"
    if answer.get("prediction") != 2.5:
        return f"prediction {answer.get('prediction')!r}, expected 2.5"
    if case == "cached" and answer.get("cached") is not True:
        return "the second identical request was not a cache hit"
    return None


def run_case(case, server, token, args, workdir, backing):
    _, method, path, body, _ = CASES[case]
    body_bytes = None if body is None else json.dumps(body, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json"} if body_bytes else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"

    def send():
        return http(server.base + path, data=body_bytes, headers=headers, method=method)

    status, raw = send()
    for _ in range(10 if case.startswith("cached") else 0):  # until a worker answers from its cache
        if b'"cached":true' in raw.replace(b" ", b""):
            break
        status, raw = send()
    try:
        problem = None if 200 <= status < 300 else f"probe answered {status}"
        problem = problem or expected_answer(case, server.kind, json.loads(raw))
    except ValueError:
        problem = "probe answer is not JSON"
    if problem:
        return {"status": "error", "reason": problem, "probe": raw[:300].decode("utf-8", "replace")}

    wrk_env = {"BENCH_METHOD": method, "BENCH_TOKEN": token or "", "BENCH_BODY_FILE": ""}
    if body_bytes:
        wrk_env["BENCH_BODY_FILE"] = str(workdir / f"body-{case}.json")
        Path(wrk_env["BENCH_BODY_FILE"]).write_bytes(body_bytes)
    tag = f"{server.name}-{case}"
    url = server.base + path
    if args.warmup:
        wrk(url, args.warmup, args.connections, wrk_env, workdir / f"{tag}-warmup.json")
    profile_to = None
    if args.profile and server.kind in ("mlapi", "models"):
        profile_to = args.profile / f"{server.name}-{case}.speedscope.json"
    attempts, non2xx = 0, 0
    while True:  # connections all on one worker measure the placement, not the app: again
        attempts += 1
        result = measure(server, url, wrk_env, args, workdir / f"{tag}.json", backing, profile_to)
        non2xx += result["non2xx"] + result["socket_errors"]  # of every attempt
        if attempts > args.rebalance_retries or not unbalanced(result, server.workers_expected):
            break
    result.update(status="ok", attempts=attempts)
    if unbalanced(result, server.workers_expected):
        result["caveat"] = "connections on one worker"
    if result["workers_seen"] > server.workers_expected:
        result["caveat"] = "a worker restarted"
    if backing.get("redis") and server.kind in ("mlapi", "models"):
        time.sleep(1)  # let the requests wrk left in flight finish first
        monitored = backing["redis"].calls_per_request(send)
        result["redis_calls_per_request"] = monitored.pop("calls")
        result["redis_monitored"] = monitored
    if non2xx:
        result.update(status="error", reason=f"{non2xx} non-2xx responses or socket errors")
    return result


# --- one configuration ---------------------------------------------------------------


def write_slow_model(repository):
    """``slow``: tanh(x W_in) then SLOW_LAYERS times tanh(h W), one shared W (ONNX)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    weights = {
        "w_in": rng.normal(0, 0.5, (4, SLOW_WIDTH)),
        "w": rng.normal(0, 1 / np.sqrt(SLOW_WIDTH), (SLOW_WIDTH, SLOW_WIDTH)),
        "w_out": rng.normal(0, 1 / np.sqrt(SLOW_WIDTH), (SLOW_WIDTH, 1)),
    }
    nodes = [helper.make_node("MatMul", ["features", "w_in"], ["h0"])]
    for i in range(SLOW_LAYERS):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("MatMul", [f"h{SLOW_LAYERS}", "w_out"], ["out"]))
    nodes.append(helper.make_node("Reshape", ["out", "rows"], ["prediction"]))
    initializers = [numpy_helper.from_array(w.astype(np.float32), k) for k, w in weights.items()]
    initializers.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "rows"))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, [None])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    (repository / "slow" / "1").mkdir(parents=True)
    onnx.save(model, str(repository / "slow" / "1" / "model.onnx"))


def write_big_model(folder):
    """A logistic model of BIG_FEATURES weights, as an .npz file (docs/models.md)."""
    folder.mkdir()
    weights = np.random.default_rng(1).normal(0, 0.01, BIG_FEATURES)
    np.savez(
        folder / "big.npz",
        name=np.array("big"),
        version=np.array("1"),
        kind=np.array("logistic"),
        weights=weights,
        bias=np.array(0.1),
    )


def server_env(workdir, backing):
    """The caller's environment without server settings, plus the bench's."""
    drop = ("MLAPI_", "GUNICORN_", "PROMETHEUS_MULTIPROC_DIR", "WEB_CONCURRENCY", "PORT", "HOST")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        MLAPI_ENV="production",
        MLAPI_SECRET_KEY=secrets.token_urlsafe(48),
        MLAPI_INSTANCE_PATH=str(workdir / "instance"),
        MLAPI_MODEL_DIR=str(workdir / "models"),
        MLAPI_LOG_LEVEL="WARNING",
        MLAPI_PREDICT_RATE_LIMIT="1000000/minute",  # never throttled
    )
    if "redis" in backing:
        env.update(MLAPI_REDIS_URL=backing["redis"].url, WEB_CONCURRENCY="2")
    if "postgres" in backing:
        env.update(MLAPI_DATABASE_URL=backing["postgres"].url)
    return env


def run_configuration(config, args, workdir):
    backing, servers = {}, {}
    try:
        if config == "redis":
            backing["redis"] = RedisServer(workdir)
            if PG_BIN:
                backing["postgres"] = PostgresServer(workdir, PG_BIN)
        env = server_env(workdir, backing)
        write_big_model(workdir / "models")
        write_slow_model(workdir / "repository")
        password = secrets.token_urlsafe(18)
        done = subprocess.run(
            [
                str(BIN / "flask"),
                "--app",
                "wsgi",
                "users",
                "create",
                "bench",
                "--password",
                password,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode:
            raise RuntimeError(f"flask users create failed: {done.stderr.strip()[-800:]}")
        workers = 2 if backing else 1
        models_env = dict(env, MLAPI_MODEL_DIR=str(workdir / "repository"))
        servers = {
            k: Server(k, config, models_env if k == "models" else env, workers, workdir)
            for k in SERVERS
        }
        for server in servers.values():
            server.wait_ready()
        tokens = {
            "mlapi": servers["mlapi"].token("bench", password),
            "models": servers["models"].token("bench", password),
            "tutorial": servers["tutorial"].token("testuser", "testpass123"),
            "bare": None,
        }
        cases = {}
        for case, (*_, kinds) in CASES.items():
            if args.only and case not in args.only:
                continue
            for kind in kinds:
                token = tokens[kind] if case in AUTHENTICATED else None
                result = run_case(case, servers[kind], token, args, workdir, backing)
                cases.setdefault(case, {})[kind] = result
                print(f"  {config:8} {case:9} {kind:8} {summary(result)}", flush=True)
        database = "postgresql" if "postgres" in backing else "sqlite"
        return {
            "description": CONFIGS[config],
            "workers": workers,
            "database": database,
            "cases": cases,
            "tracing": tracing_state(servers["mlapi"]),
        }
    finally:
        for process in [*servers.values(), *backing.values()]:
            process.stop()


TRACING_SERIES = re.compile(
    r'^(mlapi_tracing_active|mlapi_opentelemetry_modules)\{pid="(\d+)"\} ([0-9.e+]+)$', re.M
)


def tracing_state(server, scrapes=20):
    """Tracing as mlapi's workers report it after the load, on /metrics (each scrape is
    answered by one worker: up to ``scrapes`` tries until every worker has answered)."""
    workers = {str(worker.pid) for worker in server.workers()}
    seen = {}
    for _ in range(scrapes):
        status, raw = http(server.base + "/metrics")
        for name, pid, value in TRACING_SERIES.findall(raw.decode() if status == 200 else ""):
            seen.setdefault(pid, {})[name] = int(float(value))
        if workers <= seen.keys():
            break
    found = [seen[pid] for pid in sorted(workers & seen.keys())]
    return {
        "on": any(state.get("mlapi_tracing_active") for state in found),
        "opentelemetry_modules_max": max(
            (state.get("mlapi_opentelemetry_modules", 0) for state in found), default=None
        ),
        "workers_checked": len(found),
        "workers": len(workers),
    }


def tracing_line(config, tracing):
    """One line of the report: tracing off costs nothing (no OpenTelemetry import)."""
    return (
        f"{config}: tracing {'on' if tracing['on'] else 'off'}, opentelemetry modules imported "
        f"in a worker: {tracing['opentelemetry_modules_max']} "
        f"({tracing['workers_checked']} of {tracing['workers']} workers checked)"
    )


def summary(result):
    if result["status"] != "ok" and "rps" not in result:
        return f"{result['status']}: {result['reason']}"
    text = (
        f"{result['rps']:7.0f} req/s  p50 {result['latency_ms']['p50']:6.2f} ms  "
        f"CPU {result['cpu_ms_per_request']:.3f} ms/req  RSS {result['rss_peak_mib']} MiB (PSS {result.get('pss_end_mib', '-')})"
    )
    if "redis_calls_per_request" in result:
        text += f"  Redis {result['redis_calls_per_request']:g} calls, "
        text += f"{result['redis_commands_per_request']:g} commands/req"
    if "sql_statements_per_request" in result:
        text += f"  SQL {result['sql_statements_per_request']:g}/req"
    text += f"  others {result['others_cores']} cores"
    return text + "".join(f"  [{result[k]}]" for k in ("caveat", "reason") if k in result)


# --- goals (issue 13) ------------------------------------------------------------------

BOTH = ("redis", "embedded")
# title, configurations, mlapi's case, the other server's case, the other server, at least
RATIO_GOALS = [
    ("authenticated /v1/predict vs bare POST", BOTH, "predict", "predict", "bare", 0.5),
    ("/predict-cached hit vs bare POST", ("redis",), "cached", "predict", "bare", 0.5),
    ("/health/live vs bare GET", BOTH, "health", "health", "bare", 0.85),
    ("/v1/predict vs the tutorial", ("redis",), "predict", "predict", "tutorial", 2),
    ("/predict-cached hit vs the tutorial's", ("redis",), "cached", "cached", "tutorial", 2),
    ("cache hit vs uncached /v1/predict (cheapest model)", BOTH, "cached", "predict", "mlapi", 1),
    ("cache hit vs computing a >= 1 ms model", BOTH, "cached-slow", "infer-slow", "models", 5),
]


def goal(title, config, now, target, verdict, note=""):
    verdicts = {True: "pass", False: "FAIL", None: "n/a"}
    return {
        "goal": title,
        "config": config,
        "now": "–" if now is None else now,
        "goal_value": target,
        "verdict": verdicts.get(verdict, verdict),
        "note": note,
    }


def ratio_goal(configs, title, config, case, other_case, other_kind, threshold):
    """mlapi's case against another server's: throughput ratio, CPU-per-request ratio."""
    cases = configs[config]["cases"]
    mine = cases.get(case, {}).get("models" if other_kind == "models" else "mlapi", {})
    theirs = cases.get(other_case, {}).get(other_kind, {})
    note = ""
    average = cases.get("infer", {}).get("mlapi", {})
    if other_case == "infer-slow" and "rps" in theirs and "rps" in average:
        cost = theirs["cpu_ms_per_request"] - average["cpu_ms_per_request"]
        note = f"computing `slow` costs {cost:.2f} ms/req more than `average` (>= 1 ms)"
    if "rps" not in mine or "rps" not in theirs:
        return goal(title, config, None, f">= {threshold}x", None, note or "not measured")
    throughput = mine["rps"] / theirs["rps"]
    cpu = theirs["cpu_ms_per_request"] / mine["cpu_ms_per_request"]
    verdict = throughput >= threshold
    if verdict != (cpu >= threshold):
        verdict = "unclear"  # throughput and CPU per request disagree: a noisy run
    now = f"{throughput:.2f}x (CPU/req {cpu:.2f}x)"
    return goal(title, config, now, f">= {threshold}x", verdict, note)


def evaluate_goals(configs):
    rows = [
        ratio_goal(configs, title, config, *compared)
        for title, in_configs, *compared in RATIO_GOALS
        for config in in_configs
        if config in configs
    ]
    for config, found in configs.items():
        runs = [r["mlapi"] for r in found["cases"].values() if "rps" in r.get("mlapi", {})]
        peak = max((r["rss_peak_mib"] for r in runs), default=None)
        now, verdict = (None, None) if peak is None else (f"{peak} MiB", peak < 80)
        pss = max((r.get("pss_end_mib", 0) for r in runs), default=0)
        note = f"PSS (private pages + share of the shared ones) at most {pss} MiB" if pss else ""
        rows.append(goal("peak RSS per mlapi worker", config, now, "< 80 MiB", verdict, note))
        for case in ("predict", "cached"):
            run = found["cases"].get(case, {}).get("mlapi", {})
            per_request = run.get("sql_statements_per_request")
            title = f"SQL statements per authenticated request ({case})"
            target = "<= 1 per user per s per worker"
            if per_request is None:
                note = "not measured"
                if found["database"] == "sqlite":
                    note = "SQLite: not countable from outside; the tests count statements"
                rows.append(goal(title, config, None, target, None, note))
                continue
            per_second = run.get("sql_statements_per_second", per_request * run["rps"])
            now = f"{per_request:g}/req = {per_second:.1f}/s, 1 user, {found['workers']} workers"
            note = "pg_stat_statements of the bench's PostgreSQL (sql_statements in the JSON)"
            verdict = per_second <= found["workers"]
            if "sql_statements_total" in run:
                # A worker that reads at most once a second reads up to floor(T) + 1 times
                # in a window of T seconds that opens just before one of its reads.
                bound = found["workers"] * (math.floor(run["seconds"]) + 1)
                verdict = run["sql_statements_total"] <= bound
                now += (
                    f" ({run['sql_statements_total']} in {run['seconds']:.1f} s; at most {bound})"
                )
            rows.append(goal(title, config, now, target, verdict, note))
    for case in ("predict", "cached", "infer") if "redis" in configs else ():
        run = configs["redis"]["cases"].get(case, {}).get("mlapi", {})
        calls = run.get("redis_calls_per_request")
        rows.append(
            goal(
                f"Redis round trips per request ({case})",
                "redis",
                None
                if calls is None
                else f"{calls:g} ({run['redis_commands_per_request']:g} commands)",
                "1",
                None if calls is None else calls <= 1,
                "round trips: MONITOR over sequential requests, scripts' inner commands and "
                "new connections' handshakes excluded; commands: INFO "
                "total_commands_processed under load",
            )
        )
    return rows


# --- report ------------------------------------------------------------------------------


def render(report):
    """The run as Markdown: one table of cases, one of issue 13's goals."""
    lines = [
        f"mlapi bench {report['generated_at']}, commit {report['git_commit']}, "
        f"{report['machine']['cpus']} CPUs, {report['machine']['wrk']}; "
        f"{report['settings']['duration_s']} s per case after {report['settings']['warmup_s']} s "
        f"warm-up, {report['settings']['connections']} connections",
        "",
        "| config | case | server | req/s | p50 ms | p99 ms | CPU ms/req | peak RSS/worker MiB "
        "| Redis calls/req | Redis cmds/req | SQL/req | vs bare | vs tutorial | others' cores "
        "| note |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for config, found in report["configs"].items():
        cases = found["cases"]
        for case, runs in cases.items():
            for kind, run in runs.items():
                if "rps" not in run:
                    lines.append(
                        f"| {config} | {case} | {kind} | | | | | | | | | | | | {run.get('reason')} |"
                    )
                    continue
                vs = []
                for other, ref_case in (("bare", BARE_REFERENCE.get(case)), ("tutorial", case)):
                    ref = cases.get(ref_case, {}).get(other, {})
                    shown = kind == "mlapi" and "rps" in ref
                    vs.append(f"{run['rps'] / ref['rps']:.2f}x" if shown else "")
                note = "; ".join(run[k] for k in ("caveat", "reason") if k in run)
                lines.append(
                    f"| {config} | {case} | {kind} | {run['rps']:,.0f} | {run['latency_ms']['p50']} | "
                    f"{run['latency_ms']['p99']} | {run['cpu_ms_per_request']:.2f} | {run['rss_peak_mib']} | "
                    f"{run.get('redis_calls_per_request', '')} | {run.get('redis_commands_per_request', '')} | "
                    f"{run.get('sql_statements_per_request', '')} | "
                    f"{vs[0]} | {vs[1]} | {run['others_cores']} | {note} |"
                )
    lines += [""] + [
        tracing_line(config, found["tracing"])
        for config, found in report["configs"].items()
        if "tracing" in found
    ]
    lines += [
        "",
        "| goal (issue 13) | config | now | goal | verdict | note |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["goals"]:
        lines.append(
            f"| {row['goal']} | {row['config']} | {row['now']} | {row['goal_value']} | {row['verdict']} | "
            f"{row['note']} |"
        )
    return "\n".join(lines)


def machine():
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    return {
        "python": platform.python_version(),
        "wrk": out.split(" [")[0].strip() if out else None,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="4 s per case after 1 s warm-up (~2-3 min)"
    )
    parser.add_argument("--duration", type=int, help="seconds per case (10; --quick 4)")
    parser.add_argument("--warmup", type=int, help="warm-up seconds per case (2; --quick 1)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (8)")
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS), help="only these")
    parser.add_argument("--only", action="append", choices=sorted(CASES), help="only these cases")
    parser.add_argument(
        "--rebalance-retries",
        type=int,
        help="re-measure a case whose connections all landed on one of the workers (2; --quick 1)",
    )
    parser.add_argument(
        "--profile", type=Path, help="write py-spy profiles of mlapi's cases to this folder"
    )
    parser.add_argument("--output", type=Path, default=BENCH / "results" / "latest.json")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="print the tables of a results file"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs")
    args = parser.parse_args(argv)
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return 0
    quick = args.quick
    args.duration = args.duration or (4 if quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    retries = args.rebalance_retries
    args.rebalance_retries = retries if retries is not None else (1 if quick else 2)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="mlapi-bench-"))
    print(
        f"mlapi bench: {args.duration} s per case after {args.warmup} s warm-up, "
        f"{args.connections} connections; logs in {workdir}",
        flush=True,
    )
    configs, failed = {}, True
    try:
        for config in CONFIGS:
            if not args.config or config in args.config:
                (workdir / config).mkdir()
                configs[config] = run_configuration(config, args, workdir / config)
        failed = False
    finally:
        if failed or args.keep_logs:
            print(f"server logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    report = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": commit or None,
        "machine": machine(),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "wrk_threads": 1,
            "predict_rate_limit": "1000000/minute",
            "profiled": bool(args.profile),
        },
        "case_titles": {case: spec[0] for case, spec in CASES.items()},
        "configs": configs,
        "goals": evaluate_goals(configs),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(render(report))
    print(f"\nwrote {args.output} in {report['elapsed_s']} s")
    errors = [r for c in configs.values() for runs in c["cases"].values() for r in runs.values()]
    return 1 if any(r["status"] != "ok" for r in errors) else 0


if __name__ == "__main__":
    sys.exit(main())
