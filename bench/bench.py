#!/usr/bin/env python
"""Load-test mlapi under gunicorn against a bare Flask baseline; see bench/README.md.

Run through ``bench/run`` (it prepares the venv and wrk). For each configuration
(embedded: no Redis, 1 worker; redis: MLAPI_REDIS_URL and WEB_CONCURRENCY=2)
this starts mlapi and bench/bare_app.py with the repository's gunicorn.conf.py,
creates a user, logs in, drives every case with wrk over loopback, samples the
workers' memory with psutil, and writes bench/results/latest.json.
"""

import argparse
import contextlib
import json
import os
import platform
import random
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
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent
LUA = BENCH / "wrk" / "case.lua"
MIB = 1024 * 1024

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
PASSWORD_BYTES = 18

# Goals (see bench/README.md).
HEALTH_MIN_RATIO = 0.8
PREDICT_MIN_RATIO = 0.5
BATCH_MIN_ROWS_FACTOR = 50
P99_MAX_FACTOR = 3.0
RSS_MAX_MIB = 80

SINGLE = [1.0, 2.0, 3.0, 4.0]
BATCH_ROWS = 1000


def batch_instances(rows=BATCH_ROWS, seed=1):
    """Deterministic varied rows of 4 finite floats (a realistic mix of digits)."""
    rnd = random.Random(seed)
    return [[round(rnd.uniform(-100, 100), 6) for _ in range(4)] for _ in range(rows)]


def infer_body():
    """Open Inference Protocol (KServe v2) request: one FP64 row of 4 features."""
    return {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP64", "data": SINGLE}]}


# name, server, method, path, body, rows per request, authenticated, optional endpoint
CASES = [
    ("health", "mlapi", "GET", "/health/live", None, 1, False, False),
    ("health", "bare", "GET", "/health/live", None, 1, False, False),
    ("predict", "mlapi", "POST", "/v1/predict", SINGLE, 1, True, False),
    ("predict", "bare", "POST", "/v1/predict", SINGLE, 1, False, False),
    ("cached", "mlapi", "POST", "/predict-cached", SINGLE, 1, True, False),
    ("batch", "mlapi", "POST", "/v1/predict", {"instances": batch_instances()}, 1000, True, True),
    ("batch", "bare", "POST", "/v1/predict", {"instances": batch_instances()}, 1000, False, True),
    ("infer", "mlapi", "POST", "/v2/models/average/infer", infer_body(), 1, True, True),
]

# The baseline each mlapi case is compared with.
REFERENCE = {"health": "health", "predict": "predict", "cached": "predict", "infer": "predict"}
REFERENCE["batch"] = "batch"

CASE_TITLES = {
    "health": "GET /health/live (bare: constant GET)",
    "predict": "POST /v1/predict, 1 row, JWT (bare: constant POST)",
    "cached": "POST /predict-cached, cache hit, JWT (bare: constant POST)",
    "batch": "POST /v1/predict, 1,000 rows, JWT (bare: constant POST, same body)",
    "infer": "POST /v2/models/average/infer, FP64 [1,4], JWT (bare: constant POST)",
}


def configurations(prefix):
    return {
        "embedded": {
            "description": "no MLAPI_REDIS_URL: in-process limits and cache, 1 gthread worker",
            "env": {},
        },
        "redis": {
            "description": "MLAPI_REDIS_URL, WEB_CONCURRENCY=2: shared limits and cache in Redis",
            "env": {
                "MLAPI_REDIS_URL": REDIS_URL,
                "WEB_CONCURRENCY": "2",
                "MLAPI_REDIS_KEY_PREFIX": f"{prefix}:",
                # flask-limiter's keys are not under MLAPI_REDIS_KEY_PREFIX: isolate them too.
                "MLAPI_RATELIMIT_KEY_PREFIX": prefix,
            },
        },
    }


# --- processes -------------------------------------------------------------------


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_environ():
    """The caller's environment without any setting that would change the servers."""
    drop = ("MLAPI_", "GUNICORN_", "PROMETHEUS_MULTIPROC_DIR", "WEB_CONCURRENCY", "PORT", "HOST")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


class Server:
    """A gunicorn master we started, with its log file; stopped by its pid."""

    def __init__(self, name, app, env, workdir):
        self.name = name
        self.port = free_port()
        self.workdir = workdir
        self.env = dict(env)
        self.env["GUNICORN_BIND"] = f"127.0.0.1:{self.port}"
        self.env["PROMETHEUS_MULTIPROC_DIR"] = str(workdir / f"prometheus-{name}")
        self.log_path = workdir / f"{name}.log"
        self.app = app
        self.proc = None

    @property
    def base(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, extra_args=()):
        os.makedirs(self.env["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
        cmd = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", *extra_args, self.app]
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, expected_workers, timeout=90):
        self.workers_expected = expected_workers
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start; see {self.log_path}")
            with contextlib.suppress(OSError):
                status, _ = http(self.base + "/health/live", timeout=1)
                if status == 200 and len(self.workers()) >= expected_workers:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout}s; see {self.log_path}")

    def workers(self):
        try:
            return psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        children = self.workers()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        self.log.close()


def http(url, data=None, headers=None, timeout=10, method=None):
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def run_checked(cmd, env, what):
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return done.stdout


# --- measurement -----------------------------------------------------------------


class WorkerSampler(threading.Thread):
    """Samples RSS and CPU time of a gunicorn master's workers until stopped."""

    def __init__(self, server, interval=0.1):
        super().__init__(daemon=True)
        self.server = server
        self.interval = interval
        self.peak_rss = {}
        self.cpu_start = {}
        self.cpu_last = {}
        self.initial = None
        self.halt = threading.Event()

    def start(self):
        self.sample()
        self.initial = set(self.peak_rss)
        super().start()

    def sample(self):
        for proc in self.server.workers():
            try:
                with proc.oneshot():
                    rss = proc.memory_info().rss
                    times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            cpu = times.user + times.system
            self.peak_rss[proc.pid] = max(self.peak_rss.get(proc.pid, 0), rss)
            # A worker that appears during the run was forked during it: all its CPU counts.
            booted_now = self.initial is not None and proc.pid not in self.initial
            self.cpu_start.setdefault(proc.pid, 0.0 if booted_now else cpu)
            self.cpu_last[proc.pid] = cpu

    def run(self):
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(self.interval)

    def finish(self):
        self.halt.set()
        self.join()
        self.sample()
        cpu = {p: self.cpu_last[p] - self.cpu_start[p] for p in self.cpu_last}
        steady = [rss for pid, rss in self.peak_rss.items() if pid in self.initial]
        return {
            "rss_peak_mib": round(max(self.peak_rss.values(), default=0) / MIB, 1),
            # Workers already serving when the run began (no boot transient in the figure).
            "rss_peak_mib_steady": round(max(steady, default=0) / MIB, 1),
            "rss_peak_mib_by_worker": {
                str(pid): round(rss / MIB, 1) for pid, rss in sorted(self.peak_rss.items())
            },
            "cpu_seconds": sum(cpu.values()),
            "cpu_seconds_by_worker": {str(p): round(c, 2) for p, c in sorted(cpu.items())},
        }


def busy_seconds(times):
    """CPU seconds the whole machine spent not idle."""
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def redis_server():
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "redis-server":
            return proc
    return None


def cpu_snapshot():
    """CPU seconds so far: the machine, wrk (our only child meanwhile), redis-server, us."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    me = resource.getrusage(resource.RUSAGE_SELF)
    redis_cpu = 0.0
    proc = redis_server()
    if proc is not None:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            redis_cpu = times.user + times.system
    return {
        "machine": busy_seconds(psutil.cpu_times()),
        "wrk": children.ru_utime + children.ru_stime,
        "redis": redis_cpu,
        "bench": me.ru_utime + me.ru_stime,
    }


def wrk(url, seconds, connections, env_extra, result_file, timeout_s=10):
    env = dict(os.environ)
    env.update(env_extra, BENCH_RESULT=str(result_file))
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        f"--timeout={timeout_s}s",
        "-s",
        str(LUA),
        url,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0 or not result_file.exists():
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return json.loads(result_file.read_text())


def probe(server, method, path, body_bytes, token):
    headers = {"Content-Type": "application/json"} if body_bytes is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    status, raw = http(server.base + path, data=body_bytes, headers=headers, method=method)
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    return status, parsed, raw[:300].decode("utf-8", "replace")


def check_answer(case, server_kind, parsed):
    """A 2xx must also carry the right answer; returns a problem or None."""
    if server_kind == "bare" or not isinstance(parsed, dict):
        return None if isinstance(parsed, dict) else "response is not a JSON object"
    if case == "health" and parsed.get("status") != "alive":
        return f"unexpected body {parsed}"
    if case in ("predict", "cached") and parsed.get("prediction") != 2.5:
        return f"prediction {parsed.get('prediction')!r}, expected 2.5"
    if case == "cached" and parsed.get("cached") is not True:
        return "second identical request was not a cache hit"
    if case == "batch":
        values = parsed.get("predictions")
        if values is not None and len(values) != BATCH_ROWS:
            return f"{len(values)} predictions for {BATCH_ROWS} rows"
    return None


def caveats(result, workers):
    """Conditions that distort a comparison: worker recycling, connections on one worker."""
    notes = []
    if result["worker_restarts"]:
        notes.append(f"{result['worker_restarts']} worker restart(s) during the run (max_requests)")
    each = sorted(result["cpu_cores"]["workers_each"].values(), reverse=True)[:workers]
    total = sum(each)
    if workers > 1 and total > 0 and min(each) < 0.2 * total:
        notes.append(
            f"unbalanced: {sum(1 for c in each if c >= 0.2 * total)} of {workers} workers "
            "did the work (keep-alive connections landed on one worker)"
        )
    return notes


def measure(server, url, env, args, rows, result_file):
    """One measured wrk run with worker RSS/CPU sampling; the case's figures."""
    sampler = WorkerSampler(server)
    sampler.start()
    before = cpu_snapshot()
    out = wrk(url, args.duration, args.connections, env, result_file)
    after = cpu_snapshot()
    memory = sampler.finish()
    used = {k: after[k] - before[k] for k in before}

    seconds = out["duration_us"] / 1e6
    rps = out["requests"] / seconds
    lat = out["latency_us"]
    return dict(
        status="ok",
        requests=out["requests"],
        duration_s=round(seconds, 2),
        rps=round(rps, 1),
        rows_per_s=round(rps * rows, 1),
        latency_ms={k: round(v / 1000, 2) for k, v in lat.items() if k != "stdev"},
        non2xx=out["non2xx"],
        non2xx_by_status=out["non2xx_by_status"],
        first_non2xx_body=out["first_non2xx_body"],
        socket_errors=out["socket_errors"],
        worker_pids_seen=len(memory["rss_peak_mib_by_worker"]),
        # gunicorn recycles a worker after max_requests (10,000 + up to 1,000 jitter).
        worker_restarts=max(0, len(memory["rss_peak_mib_by_worker"]) - server.workers_expected),
        rss_peak_mib=memory["rss_peak_mib"],
        rss_peak_mib_steady=memory["rss_peak_mib_steady"],
        rss_peak_mib_by_worker=memory["rss_peak_mib_by_worker"],
        server_cpu_ms_per_request=round(memory["cpu_seconds"] * 1000 / max(out["requests"], 1), 3),
        cpu_cores={
            "workers": round(memory["cpu_seconds"] / seconds, 2),
            "workers_each": {
                pid: round(c / seconds, 2) for pid, c in memory["cpu_seconds_by_worker"].items()
            },
            "wrk": round(used["wrk"] / seconds, 2),
            "redis_server": round(used["redis"] / seconds, 2),
            "machine_busy": round(used["machine"] / seconds, 2),
            # Whatever else ran meanwhile (other users of the machine): a noise indicator.
            "other": round(
                max(
                    0.0,
                    used["machine"]
                    - memory["cpu_seconds"]
                    - used["wrk"]
                    - used["redis"]
                    - used["bench"],
                )
                / seconds,
                2,
            ),
        },
    )


def run_case(case, server, method, path, body, rows, token, optional, args, workdir):
    body_bytes = None if body is None else json.dumps(body, separators=(",", ":")).encode()
    result = {
        "method": method,
        "path": path,
        "rows_per_request": rows,
        "request_bytes": len(body_bytes or b""),
    }
    status, parsed, text = probe(server, method, path, body_bytes, token)
    if case == "cached" and 200 <= status < 300:  # the first call fills the cache
        status, parsed, text = probe(server, method, path, body_bytes, token)
    result["probe"] = {"status": status, "body": text}
    if not 200 <= status < 300:
        if optional and 400 <= status < 500:
            result["status"] = "unavailable"
            result["reason"] = f"probe answered {status} (endpoint or body form not there yet)"
        else:
            result["status"] = "error"
            result["reason"] = f"probe answered {status}"
        return result
    problem = check_answer(case, server.name.split("-")[0], parsed)
    if problem:
        result["status"] = "error"
        result["reason"] = f"wrong answer: {problem}"
        return result

    env = {"BENCH_METHOD": method, "BENCH_TOKEN": token or "", "BENCH_BODY_FILE": ""}
    if body_bytes is not None:
        body_file = workdir / f"body-{case}.json"
        body_file.write_bytes(body_bytes)
        env["BENCH_BODY_FILE"] = str(body_file)
    tag = f"{server.name}-{case}"
    if args.warmup > 0:
        wrk(server.base + path, args.warmup, args.connections, env, workdir / f"{tag}-warm.json")
    # Several workers: if the keep-alive connections all landed on one worker, the run
    # compares connection placement, not the app; measure again (new connections).
    attempts, non2xx, socket_errors = 0, 0, 0
    while True:
        attempts += 1
        figures = measure(server, server.base + path, env, args, rows, workdir / f"{tag}.json")
        # Every response of every attempt must be 2xx, discarded attempts included.
        non2xx += figures["non2xx"]
        socket_errors += sum(figures["socket_errors"].values())
        notes = caveats(figures, server.workers_expected)
        unbalanced = any(n.startswith("unbalanced") for n in notes)
        if not unbalanced or attempts > args.rebalance_retries:
            break
    result.update(figures, attempts=attempts, non2xx_all_attempts=non2xx)
    result["caveats"] = notes
    if non2xx:
        result["status"] = "error"
        result["reason"] = f"{non2xx} non-2xx responses"
    elif socket_errors:
        result["status"] = "error"
        result["reason"] = f"{socket_errors} socket errors"
    return result


# --- one configuration ----------------------------------------------------------------


def run_configuration(name, config, args, prefix, workdir):
    env = clean_environ()
    env.update(
        MLAPI_ENV="production",
        MLAPI_SECRET_KEY=secrets.token_urlsafe(48),
        MLAPI_INSTANCE_PATH=str(workdir / "instance"),
        MLAPI_LOG_LEVEL="WARNING",
        MLAPI_PREDICT_RATE_LIMIT="1000000/minute",
    )
    env.update(config["env"])
    if args.gunicorn_args:  # an experiment, recorded in the results' settings
        env["GUNICORN_CMD_ARGS"] = args.gunicorn_args
    for item in args.env:  # an experiment, recorded in the results' settings
        key, _, value = item.partition("=")
        env[key] = value
    workers = int(env.get("WEB_CONCURRENCY", "1")) if env.get("MLAPI_REDIS_URL") else 1
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    cli_env = dict(env, PROMETHEUS_MULTIPROC_DIR="")
    cli_env.pop("PROMETHEUS_MULTIPROC_DIR")
    run_checked(
        [str(BIN / "flask"), "--app", "wsgi", "users", "create", "bench", "--password", password],
        cli_env,
        "flask users create",
    )

    mlapi = Server(f"mlapi-{name}", "wsgi:app", env, workdir)
    bare = Server(f"bare-{name}", "bare_app:app", env, workdir)
    servers = [mlapi, bare]
    try:
        mlapi.start()
        bare.start(["--pythonpath", str(BENCH)])
        for server in servers:
            server.wait_ready(workers)
        form = urllib.parse.urlencode({"username": "bench", "password": password}).encode()
        status, raw = http(mlapi.base + "/token", data=form)
        if status != 200:
            raise RuntimeError(f"POST /token answered {status}: {raw[:300]!r}")
        token = json.loads(raw)["access_token"]

        cases = {}
        for case, kind, method, path, body, rows, auth, optional in CASES:
            if args.only and case not in args.only:
                continue
            if kind == "bare" and cases.get(case, {}).get("mlapi", {}).get("status") not in (
                None,
                "ok",
                "error",
            ):
                continue  # no baseline for a case mlapi does not serve yet
            server = mlapi if kind == "mlapi" else bare
            print(f"  {name:9} {case:8} {kind:6} {method} {path}", flush=True)
            result = run_case(
                case,
                server,
                method,
                path,
                body,
                rows,
                token if auth else None,
                optional,
                args,
                workdir,
            )
            cases.setdefault(case, {})[kind] = result
            print(f"    -> {summary_line(result)}", flush=True)
        return {
            "description": config["description"],
            "workers": workers,
            "threads": int(env.get("GUNICORN_THREADS", "4")),
            "env": {k: v for k, v in config["env"].items()},
            "cases": cases,
        }
    finally:
        for server in servers:
            server.stop()


def summary_line(result):
    if result["status"] in ("unavailable",) or "rps" not in result:
        return f"{result['status']}: {result.get('reason', '')}"
    lat = result["latency_ms"]
    text = (
        f"{result['rps']:.0f} req/s, {result['rows_per_s']:.0f} rows/s, "
        f"p50 {lat['p50']} ms, p99 {lat['p99']} ms, RSS {result['rss_peak_mib']} MiB, "
        f"non-2xx {result['non2xx']}"
    )
    cores = result["cpu_cores"]
    text += f", CPU cores: workers {cores['workers']} wrk {cores['wrk']} other {cores['other']}"
    if result["worker_restarts"]:
        text += f", {result['worker_restarts']} worker restart(s)"
    if result.get("attempts", 1) > 1:
        text += f", attempt {result['attempts']} (earlier ones unbalanced)"
    if result["status"] != "ok":
        text += f"  [{result['status']}: {result.get('reason')}]"
    return text


# --- ratios and goals ---------------------------------------------------------


def add_ratios(configs):
    for config in configs.values():
        cases = config["cases"]
        for case, runs in cases.items():
            mine = runs.get("mlapi", {})
            ref = cases.get(REFERENCE[case], {}).get("bare", {})
            if mine.get("status") == "ok" and ref.get("status") == "ok":
                runs["ratio_vs_bare"] = {
                    "baseline": f"bare {REFERENCE[case]}",
                    "throughput": round(mine["rps"] / ref["rps"], 3),
                    # Worker CPU per request, bare/mlapi: insensitive to how connections
                    # spread over workers and to worker restarts.
                    "cpu_efficiency": round(
                        ref["server_cpu_ms_per_request"] / mine["server_cpu_ms_per_request"], 3
                    ),
                    "p50_latency": round(mine["latency_ms"]["p50"] / ref["latency_ms"]["p50"], 2),
                    "p99_latency": round(mine["latency_ms"]["p99"] / ref["latency_ms"]["p99"], 2),
                }


def goal(name, config, value, threshold, passed, detail):
    status = "n/a" if passed is None else ("pass" if passed else "fail")
    return {
        "goal": name,
        "config": config,
        "value": value,
        "threshold": threshold,
        "status": status,
        "detail": detail,
    }


def evaluate_goals(configs):
    goals = []
    for cname, config in configs.items():
        cases = config["cases"]

        def run(case, kind="mlapi", cases=cases):
            return cases.get(case, {}).get(kind, {})

        for case, title, threshold in (
            ("health", "/health/live throughput >= 0.8x bare GET", HEALTH_MIN_RATIO),
            (
                "predict",
                "authenticated /v1/predict throughput >= 0.5x bare POST",
                PREDICT_MIN_RATIO,
            ),
        ):
            ratios = cases.get(case, {}).get("ratio_vs_bare", {})
            ratio = ratios.get("throughput")
            notes = [f"mlapi: {n}" for n in run(case).get("caveats", [])]
            notes += [f"bare: {n}" for n in run(case, "bare").get("caveats", [])]
            detail = "mlapi req/s / bare req/s"
            if ratio is not None:
                detail += f"; CPU-per-request ratio {ratios['cpu_efficiency']}"
            if notes:
                detail += "; caveats: " + "; ".join(notes)
            verdict = goal(
                title,
                cname,
                ratio,
                threshold,
                None if ratio is None else ratio >= threshold,
                detail,
            )
            if verdict["status"] != "n/a" and notes:
                # Connections on one worker, or workers recycled mid-run (the side that
                # serves more requests recycles more often): the throughput ratio then
                # measures those too. The CPU-per-request ratio is unaffected: the verdict
                # stands when both agree, else it is inconclusive (a run with
                # --env GUNICORN_MAX_REQUESTS=0 gives a clean one).
                if (ratio >= threshold) != (ratios["cpu_efficiency"] >= threshold):
                    verdict["status"] = "inconclusive"
                else:
                    verdict["detail"] += " (CPU-per-request ratio agrees)"
            goals.append(verdict)
        batch, single = run("batch"), run("predict")
        if batch.get("status") == "ok" and single.get("status") == "ok":
            factor = round(batch["rows_per_s"] / single["rows_per_s"], 1)
            goals.append(
                goal(
                    "1,000-row batch rows/s >= 50x single-row rows/s",
                    cname,
                    factor,
                    BATCH_MIN_ROWS_FACTOR,
                    factor >= BATCH_MIN_ROWS_FACTOR,
                    "batch rows/s / single-row rows/s on /v1/predict",
                )
            )
        else:
            goals.append(
                goal(
                    "1,000-row batch rows/s >= 50x single-row rows/s",
                    cname,
                    None,
                    BATCH_MIN_ROWS_FACTOR,
                    None,
                    f"batch case {batch.get('status', 'not run')}",
                )
            )
        for case in cases:
            mine = run(case)
            if mine.get("status") != "ok":
                continue
            factor = round(mine["latency_ms"]["p99"] / max(mine["latency_ms"]["p50"], 1e-3), 2)
            goals.append(
                goal(
                    f"p99 <= 3x p50 ({case})",
                    cname,
                    factor,
                    P99_MAX_FACTOR,
                    factor <= P99_MAX_FACTOR,
                    f"p50 {mine['latency_ms']['p50']} ms, p99 {mine['latency_ms']['p99']} ms"
                    + "".join(f"; caveat: {n}" for n in mine.get("caveats", [])),
                )
            )
        done = [r for r in (run(c) for c in cases) if r.get("status") == "ok"]
        peak = max((r["rss_peak_mib"] for r in done), default=None)
        steady = max((r["rss_peak_mib_steady"] for r in done), default=None)
        goals.append(
            goal(
                "RSS per worker < 80 MiB",
                cname,
                peak,
                RSS_MAX_MIB,
                None if peak is None else peak < RSS_MAX_MIB,
                "largest peak RSS of any mlapi worker over all cases, boot of recycled "
                f"workers included; workers already serving: {steady} MiB",
            )
        )
    return goals


# --- main -----------------------------------------------------------------------


def redis_cleanup(prefix):
    try:
        import redis
    except ImportError:
        return 0
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    removed = 0
    with contextlib.suppress(redis.RedisError):
        for key in client.scan_iter(match=f"*{prefix}*", count=1000):
            removed += client.delete(key)
    return removed


def tool_versions():
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    return {
        "python": platform.python_version(),
        "wrk": out.splitlines()[0] if out else None,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def git_commit():
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip() or None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per case (10)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per case (2)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (8)")
    parser.add_argument(
        "--config", action="append", choices=["embedded", "redis"], help="only these"
    )
    parser.add_argument(
        "--only", action="append", choices=sorted(REFERENCE), help="only these cases"
    )
    parser.add_argument(
        "--rebalance-retries",
        type=int,
        default=2,
        help="re-measure a multi-worker case whose connections all landed on one worker (2)",
    )
    parser.add_argument(
        "--gunicorn-args",
        default="",
        help="experiment: extra gunicorn options for both servers (GUNICORN_CMD_ARGS), "
        "e.g. '--reuse-port'; default: none, as deployed",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="experiment: extra environment for both servers, e.g. MALLOC_ARENA_MAX=2",
    )
    parser.add_argument("--output", type=Path, default=BENCH / "results" / "latest.json")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (bench/run installs it)")

    started = time.monotonic()
    prefix = f"mlapi-bench-{secrets.token_hex(4)}"
    workdir = Path(tempfile.mkdtemp(prefix="mlapi-bench-"))
    print(
        f"mlapi bench: {args.duration}s per case after {args.warmup}s warm-up, "
        f"{args.connections} connections; work files in {workdir}",
        flush=True,
    )
    configs = {}
    failed = False
    try:
        for name, config in configurations(prefix).items():
            if args.config and name not in args.config:
                continue
            folder = workdir / name
            folder.mkdir()
            configs[name] = run_configuration(name, config, args, prefix, folder)
    except Exception as exc:
        failed = True
        print(f"bench failed: {exc}", file=sys.stderr)
        raise
    finally:
        removed = redis_cleanup(prefix)
        if failed or args.keep_logs:
            print(f"server logs kept in {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    add_ratios(configs)
    report = {
        "schema": 1,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": git_commit(),
        "machine": tool_versions(),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "wrk_threads": 1,
            "predict_rate_limit": "1000000/minute",
            "log_level": "WARNING (access log on, stdout to a file)",
            "gunicorn_extra_args": args.gunicorn_args or None,
            "extra_env": args.env or None,
        },
        "case_titles": CASE_TITLES,
        "configs": configs,
        "goals": evaluate_goals(configs),
        "redis_keys_removed": removed,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.output)

    sys.path.insert(0, str(BENCH))
    import render

    print()
    print(render.render(report))
    shown = args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output
    print(f"wrote {shown} in {report['elapsed_s']} s")
    errors = [
        (c, case, kind)
        for c, cfg in configs.items()
        for case, runs in cfg["cases"].items()
        for kind, r in runs.items()
        if kind in ("mlapi", "bare") and r.get("status") == "error"
    ]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
