#!/usr/bin/env python
"""Profile mlapi's hot paths under load with py-spy; see bench/README.md ("Profile").

    bench/run profile [--seconds 12]      (or: python bench/pyspy_profile.py ...)

Starts mlapi under gunicorn exactly as bench.py does (one configuration at a
time), drives one case with wrk, and samples the busiest worker with
``py-spy record --format raw`` (non-idle threads, so time waiting on a socket
or on the GIL is not counted). Each sample's stack is then put in one
component by the innermost frame that belongs to a component (JWT, user
lookup, limiter, spectree, metrics, logging, JSON, ...). Writes
bench/results/profile.json and bench/results/profile.md; the raw collapsed
stacks (for speedscope or flamegraph.pl) go to bench/results/profile-*.txt.
"""

import argparse
import collections
import json
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402

RESULTS = bench.BENCH / "results"
PY_SPY = bench.BIN / "py-spy"

# (config, case name, method, path, body, authenticated)
TARGETS = [
    ("embedded", "health", "GET", "/health/live", None, False),
    ("embedded", "predict", "POST", "/v1/predict", bench.SINGLE, True),
    ("redis", "predict", "POST", "/v1/predict", bench.SINGLE, True),
]

# Components. A sample goes to the innermost frame on its stack that matches an OWNER
# rule; failing that, to the innermost LIBRARY rule (libraries called by an owner, such
# as SQLAlchemy under the user lookup, count for that owner); failing that, to the
# innermost WEAK rule (the server and framework around everything).
# (component, path regex, function regex or None); a frame is "function (path:line)".
OWNER = [
    ("JSON (body parse, response serialize)", r"flask/json/|mlapi/api/strict_json\.py", None),
    ("JSON (body parse, response serialize)", r"werkzeug/wrappers/request\.py", r"get_json"),
    ("JWT: PyJWT segment parsing (_load)", r"(^|/)jwt/api_jws\.py", r"_load|_decode_base64url"),
    ("JWT: PyJWT decode/verify (rest)", r"(^|/)jwt/|(^|/)hmac\.py", None),
    ("JWT: flask-jwt-extended glue", r"flask_jwt_extended/", None),
    ("active-user tracking", r"mlapi/observability/active_users\.py", r"ActiveUsers"),
    ("user lookup (SQL SELECT per request)", r"mlapi/users\.py", None),
    ("user lookup (SQL SELECT per request)", r"mlapi/auth\.py", r"load_user"),
    ("rate limiter (flask-limiter + storage)", r"flask_limiter/|(^|/)limits/", None),
    ("rate limiter (flask-limiter + storage)", r"mlapi/limits\.py", None),
    ("spectree wrapper", r"spectree/", None),
    ("request validation (pydantic)", r"mlapi/api/(schemas|bodies)\.py|pydantic", None),
    ("model (numpy)", r"mlapi/serving/(models|registry|codec)\.py|numpy/", None),
    (
        "prediction cache",
        r"flask_caching/|cachelib/|mlapi/predictions\.py|mlapi/serving/cache\.py",
        None,
    ),
    ("metrics + request id (prometheus)", r"prometheus_client/|prometheus_flask_exporter/", None),
    ("metrics + request id (prometheus)", r"mlapi/observability/(metrics|hooks)\.py", None),
    ("logging (JSON access log)", r"pythonjsonlogger/|mlapi/observability/gunicorn\.py", None),
    ("views (mlapi/api)", r"mlapi/api/", None),
    ("error handling", r"mlapi/errors\.py", None),
]
LIBRARY = [
    ("SQLAlchemy session teardown (no query)", r"sqlalchemy/|flask_sqlalchemy/|sqlite3/", None),
    ("redis client (outside limiter/cache)", r"(^|/)redis/", None),
    ("logging (JSON access log)", r"(^|/)logging/", None),
]
WEAK = [
    ("Flask/Werkzeug (routing, request, response)", r"(^|/)flask/|werkzeug/", None),
    ("gunicorn (HTTP parsing, socket I/O, worker loop)", r"gunicorn/", None),
]
OTHER = "other (stdlib, threads, selectors)"

FRAME = re.compile(r"^(?P<func>.*) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")

# Inclusive costs worth naming (share of samples whose stack contains the frame).
INCLUSIVE = [
    (
        "verify_jwt_in_request (whole JWT check incl. user lookup)",
        r"flask_jwt_extended/view_decorators\.py",
        r"^verify_jwt_in_request$",
    ),
    ("PyJWT _load (each of 4 parses per request)", r"(^|/)jwt/api_jws\.py", r"_load$"),
    ("user_lookup_loader (load_user)", r"mlapi/auth\.py", r"^load_user$"),
    ("SQLAlchemy Session.scalar (the SELECT)", r"sqlalchemy/orm/session\.py", r"scalar$"),
    (
        "flask-limiter _check_request_limit (before_request pass + decorator pass)",
        r"flask_limiter/",
        r"_check_request_limit$",
    ),
    ("limits storage calls (hit, window stats)", r"(^|/)limits/storage/", None),
    (
        "flask-limiter after_request headers + mlapi add_ietf_headers",
        r"flask_limiter/|mlapi/limits\.py",
        r"inject_headers$|add_ietf_headers$",
    ),
    (
        "flask SessionInterface.open_session (unused cookie session)",
        r"flask/sessions\.py",
        r"open_session$",
    ),
    (
        "observability hooks (start/finish/end_request)",
        r"mlapi/observability/",
        r"start_request|finish_request|end_request",
    ),
    ("gunicorn access log (JsonLogger.access)", r"mlapi/observability/gunicorn\.py", r"access"),
    (
        "Flask wsgi_app (whole request in the app)",
        r"flask/app\.py",
        r"^Flask\.wsgi_app$|^wsgi_app$",
    ),
]


def parse_frame(text):
    match = FRAME.match(text.strip())
    if not match:
        return text, "", None
    return match["func"], match["path"], match["line"]


def matches(rule, func, path):
    _, path_re, func_re = rule
    return re.search(path_re, path) and (func_re is None or re.search(func_re, func))


def classify(frames):
    for rules in (OWNER, LIBRARY, WEAK):
        for func, path in reversed(frames):
            for rule in rules:
                if matches(rule, func, path):
                    return rule[0]
    return OTHER


def analyse(raw_path):
    """Component shares, inclusive shares and top self frames from py-spy raw output."""
    components = collections.Counter()
    inclusive = collections.Counter()
    self_frames = collections.Counter()
    total = 0
    for line in Path(raw_path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [parse_frame(f)[:2] for f in stack.split(";") if f]
        if frames and frames[0][0].startswith("process "):
            frames = frames[1:]
        if frames and frames[0][0].startswith("thread "):
            frames = frames[1:]
        if not frames:
            continue
        total += n
        components[classify(frames)] += n
        func, path = frames[-1]
        self_frames[f"{func} ({path})"] += n
        for name, path_re, func_re in INCLUSIVE:
            rule = (name, path_re, func_re)
            if any(matches(rule, f, p) for f, p in frames):
                inclusive[name] += n

    def share(counter):
        return {k: round(100 * v / total, 1) for k, v in counter.most_common()}

    return {
        "samples": total,
        "components_pct": share(components),
        "inclusive_pct": {
            name: round(100 * inclusive[name] / total, 1) if total else 0.0
            for name, _, _ in INCLUSIVE
        },
        "top_self_pct": dict(list(share(self_frames).items())[:25]),
    }


def busiest(server, seconds=0.5):
    """The worker that used the most CPU over a short window under load."""
    workers = server.workers()
    start = {p.pid: sum(p.cpu_times()[:2]) for p in workers}
    time.sleep(seconds)
    used = {p.pid: sum(p.cpu_times()[:2]) - start[p.pid] for p in workers}
    return max(used, key=used.get)


def profile_case(server, token, case, method, path, body, auth, args, workdir):
    body_bytes = None if body is None else json.dumps(body).encode()
    env = {"BENCH_METHOD": method, "BENCH_TOKEN": token if auth else "", "BENCH_BODY_FILE": ""}
    if body_bytes is not None:
        (workdir / "body.json").write_bytes(body_bytes)
        env["BENCH_BODY_FILE"] = str(workdir / "body.json")
    tag = f"{server.name}-{case}"
    total = args.seconds + 3
    result = {}
    load = threading.Thread(
        target=lambda: result.update(
            wrk=bench.wrk(server.base + path, total, args.connections, env, workdir / f"{tag}.json")
        )
    )
    load.start()
    time.sleep(1.5)
    pid = busiest(server)
    raw = RESULTS / f"profile-{tag}.txt"
    common = ["--pid", str(pid), "--rate", str(args.rate), "--duration", str(args.seconds)]
    if not args.all_threads:
        common.append("--gil")
    if args.nonblocking:
        common.append("--nonblocking")
    subprocess.run(
        [str(PY_SPY), "record", *common, "--format", "raw", "--output", str(raw)],
        check=True,
        capture_output=True,
    )
    load.join()
    report = analyse(raw)
    out = result["wrk"]
    report.update(
        config=server.name.split("-", 1)[1],
        case=case,
        method=method,
        path=path,
        worker_pid=pid,
        rps_while_profiled=round(out["requests"] / (out["duration_us"] / 1e6), 1),
        non2xx=out["non2xx"],
        raw_stacks=str(raw.relative_to(bench.ROOT)),
    )
    return report


def start_configuration(name, config, args, prefix, workdir):
    env = bench.clean_environ()
    env.update(
        MLAPI_ENV="production",
        MLAPI_SECRET_KEY=bench.secrets.token_urlsafe(48),
        MLAPI_INSTANCE_PATH=str(workdir / "instance"),
        MLAPI_LOG_LEVEL="WARNING",
        MLAPI_PREDICT_RATE_LIMIT="1000000/minute",
    )
    env.update(config["env"])
    workers = int(env.get("WEB_CONCURRENCY", "1")) if env.get("MLAPI_REDIS_URL") else 1
    password = bench.secrets.token_urlsafe(18)
    cli_env = {k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    bench.run_checked(
        [
            str(bench.BIN / "flask"),
            "--app",
            "wsgi",
            "users",
            "create",
            "bench",
            "--password",
            password,
        ],
        cli_env,
        "flask users create",
    )
    server = bench.Server(f"mlapi-{name}", "wsgi:app", env, workdir)
    server.start()
    server.wait_ready(workers)
    form = urllib.parse.urlencode({"username": "bench", "password": password}).encode()
    status, raw = bench.http(server.base + "/token", data=form)
    if status != 200:
        server.stop()
        raise RuntimeError(f"POST /token answered {status}")
    return server, json.loads(raw)["access_token"]


def render(reports):
    lines = [
        "Share of py-spy samples of the busiest worker's thread holding the GIL (Python CPU "
        "time; time with the GIL released, in syscalls or SQLite's C code, is not seen), by "
        "component: the innermost frame on the stack that belongs to a component decides.",
        "",
    ]
    names = []
    for report in reports:
        for name in report["components_pct"]:
            if name not in names:
                names.append(name)
    head = " | ".join(f"{r['config']} {r['case']}" for r in reports)
    lines += [f"| component | {head} |", "|---" + "|--:" * len(reports) + "|"]
    for name in names:
        cells = " | ".join(f"{r['components_pct'].get(name, 0.0):.1f}%" for r in reports)
        lines.append(f"| {name} | {cells} |")
    samples = " | ".join(str(r["samples"]) for r in reports)
    lines.append(f"| samples | {samples} |")
    lines += ["", "Inclusive (stack contains the frame):", ""]
    lines += [f"| frame | {head} |", "|---" + "|--:" * len(reports) + "|"]
    for name, _, _ in INCLUSIVE:
        cells = " | ".join(f"{r['inclusive_pct'].get(name, 0.0):.1f}%" for r in reports)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=12, help="py-spy seconds per case")
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument(
        "--nonblocking",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="do not pause the worker to sample (less overhead; default on)",
    )
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument(
        "--all-threads",
        action="store_true",
        help="sample every non-idle thread instead of only the GIL holder (counts threads "
        "waiting for the GIL as busy)",
    )
    args = parser.parse_args(argv)
    prefix = f"mlapi-bench-{bench.secrets.token_hex(4)}"
    workdir = Path(bench.tempfile.mkdtemp(prefix="mlapi-profile-"))
    configs = bench.configurations(prefix)
    reports = []
    try:
        for name in dict.fromkeys(t[0] for t in TARGETS):
            folder = workdir / name
            folder.mkdir()
            server, token = start_configuration(name, configs[name], args, prefix, folder)
            try:
                for config, case, method, path, body, auth in TARGETS:
                    if config != name:
                        continue
                    print(f"profiling {name} {case} {method} {path}", flush=True)
                    reports.append(
                        profile_case(server, token, case, method, path, body, auth, args, folder)
                    )
            finally:
                server.stop()
    finally:
        bench.redis_cleanup(prefix)
        bench.shutil.rmtree(workdir, ignore_errors=True)
    (RESULTS / "profile.json").write_text(json.dumps(reports, indent=2) + "\n")
    text = render(reports)
    (RESULTS / "profile.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
