#!/usr/bin/env python
"""In-process micro-benchmarks behind the optimisation proposals in bench/README.md.

    bench/run micro            (or: python bench/micro.py)

Builds mlapi in this process (SQLite in a temporary folder, metrics in
multiprocess mode as under gunicorn), then times single operations of the
authenticated hot path and prototypes of the proposed changes. Prototypes are
applied by patching objects in this process only: nothing under mlapi/ is
changed. Every prototype is checked to keep the behaviour (forged, expired or
malformed tokens are still refused; a disabled user is still refused on the
next request). Writes bench/results/micro.json.
"""

import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

WORK = Path(tempfile.mkdtemp(prefix="mlapi-micro-"))
atexit.register(shutil.rmtree, WORK, ignore_errors=True)
# As under gunicorn (gunicorn.conf.py sets it before anything imports prometheus_client).
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(WORK / "prometheus")
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"])
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import logging  # noqa: E402

import sqlalchemy as sa  # noqa: E402

from mlapi import create_app  # noqa: E402
from mlapi import users as users_module  # noqa: E402
from mlapi.extensions import db, limiter  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PASSWORD = "bench-password-123"
BODY = b"[1.0,2.0,3.0,4.0]"


def timeit(fn, number=2000, repeat=5):
    """CPU microseconds per call of this process: [best, median] of ``repeat`` runs.

    CPU time, not wall time, so that other work on the machine disturbs it less.
    """
    for _ in range(min(200, number)):
        fn()
    runs = [_run(fn, number) for _ in range(repeat)]
    return [round(min(runs), 2), round(statistics.median(runs), 2)]


def _run(fn, number):
    start = time.process_time()
    for _ in range(number):
        fn()
    return (time.process_time() - start) / number * 1e6


def ab(fn, apply, undo, number=1000, rounds=7):
    """Interleave baseline and variant runs of ``fn``; best CPU microseconds of each."""
    base, variant = [], []
    for _ in range(min(200, number)):
        fn()
    for _ in range(rounds):
        base.append(_run(fn, number))
        apply()
        try:
            variant.append(_run(fn, number))
        finally:
            undo()
    b, v = min(base), min(variant)
    return {
        "baseline": round(b, 1),
        "variant": round(v, 1),
        "saved_pct": round(100 * (b - v) / b, 1),
    }


def make_app():
    app = create_app(
        {
            "ENV": "production",
            "SECRET_KEY": "micro-benchmark-secret-key-of-at-least-32-bytes",
            # Moving window of one second: the window holds about as many entries as
            # production's 600/minute would, however many requests this makes.
            "PREDICT_RATE_LIMIT": "1000000/second",
            "LOG_LEVEL": "WARNING",
        },
        instance_path=WORK / "instance",
    )
    with app.app_context():
        users_module.create("bench", PASSWORD)
    client = app.test_client()
    token = client.post("/token", data={"username": "bench", "password": PASSWORD}).json[
        "access_token"
    ]
    return app, client, token


def main():
    app, client, token = make_app()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    results = {
        "unit": "CPU microseconds per call: [best of 5, median of 5]; "
        "prototypes: best of 7 interleaved rounds"
    }

    def predict():
        response = client.post("/v1/predict", data=BODY, headers=headers)
        assert response.status_code == 200, response.data

    def live():
        assert client.get("/health/live").status_code == 200

    # -- whole requests through the Flask test client (no gunicorn, one thread) --
    results["request /health/live (test client)"] = timeit(live)
    results["request /v1/predict (test client)"] = timeit(predict)

    # -- JWT --
    import jwt as pyjwt
    from jwt import api_jws

    jws = api_jws._jws_global_obj
    results["PyJWT PyJWS._load (one parse of the token)"] = timeit(lambda: jws._load(token))
    key = app.config["JWT_SECRET_KEY"]
    results["PyJWT jwt.decode verified (1 parse + HMAC + claims)"] = timeit(
        lambda: pyjwt.decode(token, key, algorithms=["HS256"])
    )
    from flask_jwt_extended import decode_token

    with app.app_context():
        results["flask_jwt_extended.decode_token (3 parses)"] = timeit(lambda: decode_token(token))

    # -- user lookup --
    with app.app_context():
        results["users.active_user (ORM SELECT, SQLite)"] = timeit(
            lambda: users_module.active_user("bench")
        )
        user = users_module.User
        stmt = sa.select(user.username, user.role, user.disabled, user.email).where(
            user.username == sa.bindparam("name")
        )
        results["Core SELECT of 4 columns (same row)"] = timeit(
            lambda: db.session.execute(stmt, {"name": "bench"}).first()
        )

        def teardown_cycle():
            users_module.active_user("bench")
            db.session.remove()

        results["ORM SELECT + session.remove() (per-request teardown)"] = timeit(teardown_cycle)

    # -- rate limiter storage (moving window), production limit vs the bench's --
    from limits import parse as parse_limit
    from limits.storage import MemoryStorage
    from limits.strategies import MovingWindowRateLimiter

    for amount, label in ((600, "600/minute (production)"), (60_000, "filled to 60,000")):
        storage = MemoryStorage()
        strategy = MovingWindowRateLimiter(storage)
        item = parse_limit("1000000/minute")
        for _ in range(amount):
            strategy.hit(item, "k")

        def hit_and_stats(strategy=strategy, item=item):
            strategy.hit(item, "k")
            strategy.get_window_stats(item, "k")

        results[f"limits memory moving-window hit+stats, window {label}"] = timeit(
            hit_and_stats, number=1000
        )

    # -- flask-limiter's before_request on a request with nothing to limit --
    hook = limiter._check_request_limit
    with app.test_request_context("/health/live"):
        results["flask-limiter before_request (exempt /health/live)"] = timeit(hook)

    # -- metrics (multiprocess mode) --
    from mlapi.observability import logs, metrics

    results["REQUESTS.labels(...).inc() + REQUEST_LATENCY.labels(...).observe()"] = timeit(
        lambda: (
            metrics.REQUESTS.labels("POST", "/v1/predict", "200").inc(),
            metrics.REQUEST_LATENCY.labels("POST", "/v1/predict").observe(0.001),
        )
    )
    counter = metrics.REQUESTS.labels("POST", "/v1/predict", "200")
    histogram = metrics.REQUEST_LATENCY.labels("POST", "/v1/predict")
    results["same with pre-bound label children"] = timeit(
        lambda: (counter.inc(), histogram.observe(0.001))
    )

    # -- JSON access log line (gunicorn JsonLogger formatter) --
    devnull = open(os.devnull, "w")  # noqa: SIM115 - process lifetime
    handler = logging.StreamHandler(devnull)
    handler.setFormatter(logs.json_formatter())
    access = logging.getLogger("micro.access")
    access.propagate = False
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    fields = {
        "request_id": "0" * 32,
        "method": "POST",
        "route": "/v1/predict",
        "path": "/v1/predict",
        "status": 200,
        "duration": 0.001234,
        "bytes": 54,
        "client": "127.0.0.1",
        "user_agent": None,
        "user": "bench",
    }
    results["access log line via python-json-logger"] = timeit(
        lambda: access.info("POST /v1/predict 200", extra=fields)
    )

    def direct_line():
        record = dict(
            time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            level="INFO",
            logger="gunicorn.access",
            message="POST /v1/predict 200",
            **fields,
        )
        devnull.write(json.dumps(record) + "\n")

    results["same fields with json.dumps and one write"] = timeit(direct_line)

    results["worker boot: import wsgi + create_app (s, wall, fresh process)"] = boot_seconds()
    # /v1/predict only: /health/live is so short that garbage-collection pauses landing
    # in random frames move its shares by 10+ points between runs (use the py-spy profile).
    results["in-process profile (pyinstrument, test client)"] = {
        "/v1/predict": inprocess_profile(predict),
    }

    # -- prototypes measured end to end through the test client --
    results["prototypes"] = prototypes(app, client, token, headers, predict)

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "micro.json").write_text(json.dumps(results, indent=2) + "\n")
    width = max(len(k) for k in results)
    for name, value in results.items():
        if name != "prototypes":
            print(f"{name:<{width}}  {value}")
    for name, value in results["prototypes"].items():
        print(f"prototype: {name}: {value}")


def prototypes(app, client, token, headers, predict):
    """A/B the proposals on /v1/predict (and /health/live), interleaved, each undone after."""
    from jwt import api_jws

    def live():
        assert client.get("/health/live").status_code == 200

    out = {}

    # P1: memoise PyJWT's token parse (_load) by token; signature, exp and every
    # flask-jwt-extended check still run on every request.
    original_load = api_jws.PyJWS._load
    memo = {}

    def memo_load(self, jwt):
        key = jwt.encode() if isinstance(jwt, str) else jwt
        hit = memo.get(key) if isinstance(key, bytes) else None
        if hit is None:
            hit = original_load(self, jwt)  # raises for a malformed token: not cached
            if len(memo) >= 1024:
                memo.clear()
            memo[key] = hit
        payload, signing_input, header, signature = hit
        return payload, signing_input, dict(header), signature

    def p1_on():
        api_jws.PyJWS._load = memo_load

    def p1_off():
        api_jws.PyJWS._load = original_load

    out["P1 memoised PyJWT _load: /v1/predict"] = ab(predict, p1_on, p1_off)
    p1_on()
    try:
        check_tokens_refused(client, token)
    finally:
        p1_off()

    # P2: the per-request user check as one Core SELECT of the columns it needs.
    original_active = users_module.active_user
    user_table = users_module.User.__table__
    stmt = sa.select(
        user_table.c.username, user_table.c.role, user_table.c.disabled, user_table.c.email
    ).where(user_table.c.username == sa.bindparam("name"))

    class Snapshot:
        __slots__ = ("username", "role", "disabled", "email")

        def __init__(self, row):
            self.username, self.role, self.disabled, self.email = row

        @property
        def is_admin(self):
            return self.role == "admin"

    def fast_active(username):
        row = db.session.execute(stmt, {"name": username}).first()
        return Snapshot(row) if row is not None and not row.disabled else None

    def p2_on():
        users_module.active_user = fast_active

    def p2_off():
        users_module.active_user = original_active

    out["P2 Core SELECT of the needed columns: /v1/predict"] = ab(predict, p2_on, p2_off)
    p2_on()
    try:
        check_disabled_refused(app, client, headers)
    finally:
        p2_off()

    # P2b: the same SELECT on a pooled connection, without creating an ORM session
    # (so the request has no session to tear down).
    def conn_active(username):
        with db.engine.connect() as conn:
            row = conn.execute(stmt, {"name": username}).first()
        return Snapshot(row) if row is not None and not row.disabled else None

    def p2b_on():
        users_module.active_user = conn_active

    out["P2b Core SELECT on engine.connect(), no ORM session: /v1/predict"] = ab(
        predict, p2b_on, p2_off
    )
    p2b_on()
    try:
        check_disabled_refused(app, client, headers)
    finally:
        p2_off()

    # P3: skip flask-limiter's middleware pass when there is provably nothing for it
    # (no default, application, meta or blueprint limits, storage healthy).
    hooks = app.before_request_funcs[None]
    index = next(
        i for i, f in enumerate(hooks) if getattr(f, "__name__", "") == "_check_request_limit"
    )
    original_hook = hooks[index]

    def guarded():
        manager = limiter.limit_manager
        if (
            manager._default_limits
            or manager._application_limits
            or manager._blueprint_limits
            or limiter._meta_limits
            or limiter._storage_dead
        ):
            return original_hook()
        return None

    def p3_on():
        hooks[index] = guarded

    def p3_off():
        hooks[index] = original_hook

    out["P3 limiter middleware skipped when empty: /v1/predict"] = ab(predict, p3_on, p3_off)
    out["P3 limiter middleware skipped when empty: /health/live"] = ab(live, p3_on, p3_off)

    def all_on():
        p1_on()
        p2b_on()
        p3_on()

    def all_off():
        p1_off()
        p2_off()
        p3_off()

    out["P1+P2b+P3: /v1/predict"] = ab(predict, all_on, all_off)
    return out


def inprocess_profile(fn, number=3000):
    """Component shares of ``fn`` under pyinstrument, with bench/pyspy_profile.py's rules."""
    from pyinstrument import Profiler

    sys.path.insert(0, str(ROOT / "bench"))
    import pyspy_profile as rules

    profiler = Profiler(interval=0.0001)
    profiler.start()
    for _ in range(number):
        fn()
    session = profiler.stop()
    shares = {}
    total = 0.0

    def walk(frame, stack):
        nonlocal total
        stack = [*stack, (frame.function or "", frame.file_path or "")]
        own = frame.total_self_time
        # Keep only frames inside the app: drop the test client's own work.
        if own and any(fn == "wsgi_app" or fn.endswith(".wsgi_app") for fn, _ in stack):
            component = rules.classify(stack)
            shares[component] = shares.get(component, 0.0) + own
            total += own
        for child in frame.children:
            walk(child, stack)

    walk(session.root_frame(), [])
    return {k: round(100 * v / total, 1) for k, v in sorted(shares.items(), key=lambda i: -i[1])}


def boot_seconds(runs=3):
    """What a gunicorn worker does before it serves (no preload): import and build the app."""
    import subprocess

    env = dict(os.environ, MLAPI_INSTANCE_PATH=str(WORK / "boot"), MLAPI_LOG_LEVEL="WARNING")
    code = "import time; t = time.perf_counter(); import wsgi; print(time.perf_counter() - t)"
    times = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
        )
        times.append(float(done.stdout.strip().splitlines()[-1]))
    return [round(min(times), 2), round(statistics.median(times), 2)]


def check_tokens_refused(client, token):
    """The prototype must still refuse tampered, forged and malformed tokens."""
    header, payload, signature = token.split(".")
    forged = f"{header}.{payload}.{signature[:-2]}AA"
    for bad in (forged, token + "x", "a.b.c", f"{header}.{payload}!.{signature}"):
        response = client.post(
            "/v1/predict",
            data=BODY,
            headers={"Authorization": f"Bearer {bad}", "Content-Type": "application/json"},
        )
        assert response.status_code == 401, (bad, response.status_code)


def check_disabled_refused(app, client, headers):
    """A disabled user is refused on the very next request, re-enabled works again."""
    with app.app_context():
        users_module.get("bench").disabled = True
        db.session.commit()
    assert client.post("/v1/predict", data=BODY, headers=headers).status_code == 401
    with app.app_context():
        users_module.get("bench").disabled = False
        db.session.commit()
    assert client.post("/v1/predict", data=BODY, headers=headers).status_code == 200


if __name__ == "__main__":
    main()
