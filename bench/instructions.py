#!/usr/bin/env python
"""Instructions per request, counted by valgrind's callgrind: the noise-free figure.

wrk's ratios move by up to 25% between two runs on a shared machine; the number of
instructions a request executes moves by under 1%. This drives mlapi's WSGI app and the
bare Flask app (bench/bare_app.py) in one process each, without HTTP or gunicorn, under
``valgrind --tool=callgrind --instr-atstart=no``: the app starts and warms up with
instrumentation off, then callgrind counts only the N measured requests (switched on and
off from outside with callgrind_control). Instructions are not seconds (a cache miss
costs more than an add), and the server's own work is left out; use it to see what a
change saves, and bench/run for the goals.

    bench/run instructions [--config embedded|redis] [--case predict] [--requests 300]

With ``--server`` it counts whole gunicorn workers instead (the server's parsing, threads
and access log included), for mlapi, the bare app and the FastAPI tutorial, each started
as bench/run starts them but with one worker, under ``valgrind --trace-children=yes``:
the ratios of bench/run's goals without its noise. At valgrind's pace a request takes
about 50x longer, so work done once a second (mlapi's identity re-read) weighs about 50x
more per request than under load.
"""

import argparse
import contextlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PATHS = {"health": "/health/live", "predict": "/v1/predict", "cached": "/predict-cached"}
BODY = b"[1.0,2.0,3.0,4.0]"
WARMUP = 100


def child(kind, case, requests, folder):
    """Serve ``requests`` calls of ``case`` once the driver switched instrumentation on."""
    from werkzeug.test import EnvironBuilder

    headers = {}
    if kind == "bare":
        sys.path.insert(0, str(BENCH))
        from bare_app import app
    else:
        sys.path.insert(0, str(ROOT))
        import config
        from mlapi import create_app

        app = config.start(create_app)
        if case != "health":
            form = {"username": "bench", "password": os.environ["BENCH_PASSWORD"]}
            token = app.test_client().post("/token", data=form).get_json()["access_token"]
            headers["Authorization"] = f"Bearer {token}"

    def environ():
        if case == "health":
            builder = EnvironBuilder(path=PATHS[case], method="GET")
        else:
            builder = EnvironBuilder(
                path=PATHS[case], method="POST", data=BODY, headers=headers,
                content_type="application/json",
            )  # fmt: skip
        try:
            return builder.get_environ()
        finally:
            builder.close()

    def call(environ):
        statuses = []
        body = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
        b"".join(body)
        getattr(body, "close", lambda: None)()
        if not statuses[0].startswith("200"):
            raise SystemExit(f"{kind} {case}: {statuses[0]}")

    environs = [environ() for _ in range(WARMUP + requests)]
    for each in environs[:WARMUP]:
        call(each)
    (folder / "ready").touch()
    while not (folder / "go").exists():
        time.sleep(0.05)
    for each in environs[WARMUP:]:
        call(each)
    (folder / "done").touch()
    while True:
        time.sleep(1)


def count(kind, case, requests, env):
    """Instructions per request of ``kind`` serving ``case`` (one callgrind run)."""
    folder = Path(tempfile.mkdtemp(prefix="mlapi-instructions-"))
    out = folder / "callgrind.out"
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
    cmd += [f"--callgrind-out-file={out}.%p", sys.executable, __file__]
    cmd += ["--child", kind, case, str(requests), str(folder)]
    with open(folder / "log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        for ready in ("ready", "done"):
            while not (folder / ready).exists():
                if proc.poll() is not None:
                    raise RuntimeError(f"{kind} {case} stopped; see {folder / 'log'}")
                time.sleep(0.2)
            if ready == "ready":
                subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True,
                               capture_output=True)  # fmt: skip
                (folder / "go").touch()
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], capture_output=True)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    totals = [0]
    for dump in folder.glob("callgrind.out.*"):
        found = re.findall(r"^(?:summary|totals): (\d+)$", dump.read_text(), re.M)
        totals += [int(n) for n in found]
    shutil.rmtree(folder)
    return max(totals) / requests


def callgrind_total(folder, pid):
    """Instructions counted so far in process ``pid`` (every dump, every thread)."""
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    time.sleep(1)
    return sum(
        max([0, *map(int, re.findall(r"^(?:summary|totals): (\d+)$", dump.read_text(), re.M))])
        for dump in folder.glob(f"callgrind.out.{pid}*")
    )


def drive(port, case, token, count, connections=4):
    """``count`` requests of ``case`` over ``connections`` keep-alive connections."""
    body = BODY if case != "health" else None
    headers = {"Content-Type": "application/json"} if body else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    failures = []

    def send(n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        for _ in range(n):
            conn.request("POST" if body else "GET", PATHS[case], body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                failures.append(response.status)
        conn.close()

    threads = [
        threading.Thread(target=send, args=(count // connections,)) for _ in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{case}: answered {failures[:5]}")
    return count // connections * connections


def count_server(bench, kind, case, requests, env, workdir):
    """Instructions per request of one gunicorn worker of ``kind`` serving ``case``."""
    folder = Path(tempfile.mkdtemp(prefix=f"mlapi-instructions-{kind}-", dir=workdir))
    port = bench.free_port()
    env = dict(env, GUNICORN_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="1",
               GUNICORN_TIMEOUT="600", PROMETHEUS_MULTIPROC_DIR=str(folder))  # fmt: skip
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--trace-children=yes"]
    cmd += [f"--callgrind-out-file={folder}/callgrind.out.%p", str(bench.BIN / "gunicorn")]
    cmd += ["-c", "gunicorn.conf.py", *bench.SERVERS[kind]]
    server = bench.Process(f"{kind}-valgrind", cmd, env, folder)
    try:
        deadline = time.monotonic() + 600
        while True:  # imports under valgrind take a minute or two
            server.check_alive()
            with contextlib.suppress(OSError):
                if bench.http(f"http://127.0.0.1:{port}/health/live", timeout=60)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} did not start; see {server.log_path}")
            time.sleep(1)
        token = None
        if case != "health" and kind != "bare":
            user, password = {"mlapi": ("bench", env["BENCH_PASSWORD"])}.get(
                kind, ("testuser", "testpass123")
            )
            token = bench.Server.token(server_at(port), user, password)
        drive(port, case, token, WARMUP)
        (worker,) = bench.psutil.Process(server.proc.pid).children()
        subprocess.run(["callgrind_control", "-i", "on", str(worker.pid)], check=True,
                       capture_output=True)  # fmt: skip
        sent = drive(port, case, token, requests)
        return callgrind_total(folder, worker.pid) / sent
    finally:
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()


def server_at(port):
    """What bench.Server.token needs of a server: its base URL and name."""
    return type("At", (), {"base": f"http://127.0.0.1:{port}", "name": f"port {port}"})()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=["embedded", "redis"], default="embedded")
    parser.add_argument("--case", choices=list(PATHS), action="append")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument(
        "--server", action="store_true", help="whole gunicorn workers, beside bare and the tutorial"
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, case, requests, folder = args.child
        return child(kind, case, int(requests), Path(folder))

    sys.path.insert(0, str(BENCH))
    import bench

    workdir = Path(tempfile.mkdtemp(prefix="mlapi-instructions-"))
    backing = {}
    try:
        if args.config == "redis":
            backing["redis"] = bench.RedisServer(workdir)
            if bench.PG_BIN:
                backing["postgres"] = bench.PostgresServer(workdir, bench.PG_BIN)
        env = bench.server_env(workdir, backing)
        env["BENCH_PASSWORD"] = secrets.token_urlsafe(18)
        bench.write_big_model(workdir / "models")
        create = [str(bench.BIN / "flask"), "--app", "wsgi", "users", "create", "bench"]
        subprocess.run([*create, "--password", env["BENCH_PASSWORD"]], cwd=ROOT, env=env,
                       check=True, capture_output=True)  # fmt: skip
        results = {}
        if args.server:
            for case in args.case or ["health", "predict", "cached"]:
                kinds = ("mlapi", "bare", "tutorial") if case != "cached" else ("mlapi", "tutorial")
                for kind in kinds:
                    n = count_server(bench, kind, case, args.requests, env, workdir)
                    results[f"{kind} {case}"] = n
                    print(f"{args.config:8} {case:8} {kind:8} {n:>10,.0f} instructions/request"
                          " (gunicorn worker)", flush=True)  # fmt: skip
                mine = results[f"mlapi {case}"]
                for kind in kinds[1:]:
                    print(f"{args.config:8} {case:8} {kind}/mlapi {results[f'{kind} {case}'] / mine:.2f}x",
                          flush=True)  # fmt: skip
            print(
                json.dumps(
                    {"config": args.config, "server": True, "instructions_per_request": results}
                )
            )
            return 0
        for case in args.case or ["health", "predict", "cached"]:
            kinds = ("mlapi", "bare") if case != "cached" else ("mlapi",)
            for kind in kinds:
                results[f"{kind} {case}"] = count(kind, case, args.requests, env)
                print(f"{args.config:8} {case:8} {kind:6} {results[f'{kind} {case}']:>10,.0f}"
                      " instructions/request", flush=True)  # fmt: skip
            if case != "cached":
                ratio = results[f"bare {case}"] / results[f"mlapi {case}"]
                print(f"{args.config:8} {case:8} bare/mlapi {ratio:.2f}x", flush=True)
        print(json.dumps({"config": args.config, "instructions_per_request": results}))
    finally:
        for process in backing.values():
            process.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
