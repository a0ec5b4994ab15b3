"""Cost of serving trained models: CPU per call and memory per worker.

    python bench/serving.py [--output bench/results/serving.json]
    python bench/serving.py --only cpu|http|reload [--merge]

Needs requirements-dev.txt (scikit-learn, skl2onnx, onnxmltools, lightgbm, xgboost).
Trains small models on random data in a temporary folder, then measures, each
memory figure in a fresh process so imports do not overlap:

- CPU time of one single-row call: a 100-tree random forest through
  ``mlapi.serving.onnx`` against a numpy linear model (the built-in kind);
- rows/s of 1,000-row batches against single rows, in the runtime alone and through
  ``/v2/models/{m}/infer`` of a real gunicorn worker driven by tritonclient (binary
  tensors, its default, and JSON): the issue's goals are about infer calls;
- RSS/USS/PSS of two workers holding the same ~50 MB ONNX model, with its weights
  embedded and in an external data file (memory-mapped, shared);
- import and load memory, and single-row CPU, of LightGBM text and XGBoost JSON
  boosters served natively against the same boosters converted to ONNX;
- a new version of the forest loaded by two gunicorn workers under steady wrk load
  (``--only reload``): failed requests, and p99 before and during the reload.
"""

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench")]  # mlapi, and bench.py's helpers
N_FEATURES = 20


def cpu_per_call(call, seconds=1.0):
    """Median CPU microseconds of ``call()`` over batches of calls for about ``seconds``."""
    for _ in range(50):
        call()
    samples, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.process_time()
        for _ in range(100):
            call()
        samples.append((time.process_time() - started) / 100 * 1e6)
    return round(float(np.median(samples)), 2)


def train(folder, forest_only=False):
    """Train the models (or only the depth-10 forest); write them to ``folder``; return
    their paths."""
    import lightgbm
    import onnx
    import onnxmltools
    import xgboost
    from onnx import TensorProto, helper, numpy_helper
    from onnxmltools.convert.common.data_types import FloatTensorType
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, N_FEATURES)).astype(np.float32)
    y = x[:, 0] + 0.5 * x[:, 1] ** 2 - x[:, 2] + rng.normal(scale=0.1, size=len(x))
    paths = {}

    forest = RandomForestRegressor(n_estimators=100, max_depth=10, random_state=0, n_jobs=1)
    paths["forest"] = os.path.join(folder, "forest.onnx")
    onnx.save_model(to_onnx(forest.fit(x, y), x[:1], target_opset=17), paths["forest"])
    if forest_only:
        return paths
    # scikit-learn's defaults: trees grown until their leaves are pure (depth ~20 here).
    deep = RandomForestRegressor(n_estimators=100, random_state=0, n_jobs=1)
    paths["forest_deep"] = os.path.join(folder, "forest_deep.onnx")
    onnx.save_model(to_onnx(deep.fit(x, y), x[:1], target_opset=17), paths["forest_deep"])

    booster = lightgbm.LGBMRegressor(n_estimators=300, num_leaves=63, verbose=-1).fit(x, y)
    paths["lightgbm_text"] = os.path.join(folder, "lightgbm.txt")
    booster.booster_.save_model(paths["lightgbm_text"])
    paths["lightgbm_onnx"] = os.path.join(folder, "lightgbm.onnx")
    initial = [("features", FloatTensorType([None, N_FEATURES]))]
    onnx.save_model(
        onnxmltools.convert_lightgbm(booster, initial_types=initial, target_opset=15),
        paths["lightgbm_onnx"],
    )

    xgb = xgboost.XGBRegressor(n_estimators=300, max_depth=6, n_jobs=1).fit(x, y)
    paths["xgboost_json"] = os.path.join(folder, "xgboost.json")
    xgb.get_booster().save_model(paths["xgboost_json"])
    paths["xgboost_onnx"] = os.path.join(folder, "xgboost.onnx")
    onnx.save_model(
        onnxmltools.convert_xgboost(xgb, initial_types=initial, target_opset=15),
        paths["xgboost_onnx"],
    )

    # ~50 MB of weights: one dense layer, embedded and as external data.
    weights = rng.normal(size=(3200, 4096)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3200])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4096])],
        [numpy_helper.from_array(weights, "w")],
    )
    dense = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    for kind in ("embedded", "external"):
        os.makedirs(os.path.join(folder, kind))
        paths[f"dense_{kind}"] = os.path.join(folder, kind, "model.onnx")
        onnx.save_model(
            dense,
            paths[f"dense_{kind}"],
            save_as_external_data=kind == "external",
            location="model.onnx.data",
            size_threshold=1024,
        )
    return paths


def cpu_case(paths):
    """Single-row CPU and batch throughput, forest (ONNX) against a numpy linear model."""
    from mlapi.serving.onnx import load_onnx

    rng = np.random.default_rng(1)
    forest = load_onnx(paths["forest"])
    weights, bias = rng.normal(size=N_FEATURES), 0.5

    def linear(batch):
        values = np.sum(batch * weights, axis=1) + bias
        if not np.isfinite(values).all():
            raise ValueError
        return values

    row64 = rng.normal(size=(1, N_FEATURES))
    row32 = row64.astype(np.float32)
    batch32 = rng.normal(size=(1000, N_FEATURES)).astype(np.float32)
    single_forest = cpu_per_call(lambda: forest.predict({"X": row32}))
    single_linear = cpu_per_call(lambda: linear(row64))
    batch_forest = cpu_per_call(lambda: forest.predict({"X": batch32}), seconds=2.0)
    return {
        "forest_single_row_cpu_us": single_forest,
        "linear_single_row_cpu_us": single_linear,
        "forest_extra_cpu_us_over_linear": round(single_forest - single_linear, 2),
        "forest_1000_row_batch_cpu_us": batch_forest,
        "forest_rows_per_cpu_second_single": round(1e6 / single_forest),
        "forest_rows_per_cpu_second_batch": round(1000 * 1e6 / batch_forest),
        "batch_speedup": round(1000 * single_forest / batch_forest, 1),
    }


@contextlib.contextmanager
def serving_mlapi(name, models, workers=1, **settings):
    """mlapi under gunicorn serving ``models`` ({name: ONNX file}) as version 1 of each:
    yields (server, a bearer token of its user). One worker (the bench's embedded
    configuration), or more with a private redis-server; ``settings`` add to its environment."""
    import bench

    work = Path(tempfile.mkdtemp(prefix="mlapi-serving-"))
    server, backing = None, {}
    try:
        for model, path in models.items():
            os.makedirs(work / "models" / model / "1")
            shutil.copy(path, work / "models" / model / "1" / "model.onnx")
        if workers > 1:
            backing["redis"] = bench.RedisServer(work)
        env = bench.server_env(work, backing) | {"MLAPI_ONNX_THREADS": "1"} | settings
        env["WEB_CONCURRENCY"] = str(workers)
        password = secrets.token_urlsafe(18)
        flask = [str(bench.BIN / "flask"), "--app", "wsgi"]
        create = [*flask, "users", "create", "bench", "--password", password]
        subprocess.run(create, cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
        server = bench.Server("mlapi", name, env, workers, work)
        server.wait_ready()
        yield server, server.token("bench", password)
    finally:
        for process in [server, *backing.values()]:
            if process:
                process.stop()
        shutil.rmtree(work, ignore_errors=True)


HTTP_CALLS = {1: 600, 1000: 30}  # sequential infer calls per (rows per call)


def http_case(paths):
    """Single rows against 1,000-row batches through a gunicorn worker's infer route.

    One worker (the bench's embedded configuration: SQLite, no Redis), one intra-op
    thread, driven by tritonclient from this process, one call at a time. Reported per
    model and encoding: wall-clock rows/s of the client and the worker's CPU per call
    (psutil), the batch's gain over single rows by each, and a single row's worker CPU
    above the built-in ``average`` model's through the same route.
    """
    import tritonclient.http as httpclient

    import bench

    rng = np.random.default_rng(3)
    batch = rng.normal(size=(1000, N_FEATURES)).astype(np.float32)
    models = {name: paths[name] for name in ("forest", "forest_deep")}
    with serving_mlapi("serving", models) as (server, bearer):
        token = {"Authorization": f"Bearer {bearer}"}
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")

        # model -> (input, its datatype, output); `average` is the built-in mean of a row
        tensors = {"average": ("features", "FP64", np.float64, "prediction")}

        def infer(model, rows, as_binary):
            name, datatype, dtype, output = tensors.get(
                model, ("X", "FP32", np.float32, "variable")
            )
            features = httpclient.InferInput(name, list(rows.shape), datatype)
            features.set_data_from_numpy(rows.astype(dtype), binary_data=as_binary)
            wanted = httpclient.InferRequestedOutput(output, binary_data=as_binary)
            # tritonclient writes its own headers into the dict it is given: a fresh one.
            result = client.infer(model, [features], outputs=[wanted], headers=dict(token))
            return result.as_numpy(output)

        def measure(model, rows, as_binary):
            calls = HTTP_CALLS[len(rows)] // (1 if as_binary else 2)
            for _ in range(10):
                infer(model, rows, as_binary)
            sampler = bench.WorkerSampler(server)
            started = time.perf_counter()
            for _ in range(calls):
                infer(model, rows, as_binary)
            wall = time.perf_counter() - started
            cpu = sum(sampler.finish().values())
            return {
                "calls": calls,
                "rows_per_second": round(calls * len(rows) / wall),
                "worker_cpu_ms_per_call": round(cpu / calls * 1e3, 3),
                "rows_per_worker_cpu_second": round(calls * len(rows) / cpu),
            }

        expected = load_onnx_values(paths["forest"], batch)
        np.testing.assert_allclose(infer("forest", batch, True).ravel(), expected, rtol=1e-6)
        builtin = measure("average", batch[:1], True)
        results = {"average_binary_single_row": builtin}
        for model in ("forest", "forest_deep"):
            for encoding, as_binary in (("binary", True), ("json", False)):
                single = measure(model, batch[:1], as_binary)
                many = measure(model, batch, as_binary)
                results[f"{model}_{encoding}"] = {
                    "single_row": single,
                    "single_row_cpu_ms_over_builtin": round(
                        single["worker_cpu_ms_per_call"] - builtin["worker_cpu_ms_per_call"], 3
                    ),
                    "batch_1000_rows": many,
                    "batch_gain_wall": round(
                        many["rows_per_second"] / single["rows_per_second"], 1
                    ),
                    "batch_gain_cpu": round(
                        many["rows_per_worker_cpu_second"] / single["rows_per_worker_cpu_second"], 1
                    ),
                }
        return results


RELOAD_WINDOW = 10  # seconds of each wrk window: before, during and after the reload
RELOAD_AT = 3  # seconds into the reload window when the new version is copied in
RELOAD_ATTEMPTS = 3  # windows whose connections all landed on one worker are measured again


def reload_case(paths):
    """A new version loaded under steady load, by two gunicorn workers (private Redis).

    wrk (8 connections, ``bench/wrk/case.lua``) sends single-row infer calls to the forest
    in three back-to-back windows of RELOAD_WINDOW seconds: before (version 1); the
    reload, version 2 copied into the repository RELOAD_AT seconds in (under a hidden
    name, then renamed), which every worker's poller (every second) loads while serving;
    after. A window whose keep-alive connections all landed on one worker is measured
    again (a reload window with the next version), since an idle worker would load it
    unloaded. Reported per window as bench.py measures a case, with the goal's verdict:
    no failed request in any window, the reload window's p99 within 2x of the one before,
    both workers logged loading the new version within the reload window, and 40 calls on
    fresh connections afterwards all answer with it.
    """
    import bench

    row = np.random.default_rng(4).normal(size=N_FEATURES).round(4).tolist()
    body = {"inputs": [{"name": "X", "shape": [1, N_FEATURES], "datatype": "FP32", "data": row}]}
    settings = {"MLAPI_MODEL_POLL_SECONDS": "1", "MLAPI_LOG_LEVEL": "INFO"}
    with serving_mlapi("reload", {"forest": paths["forest"]}, 2, **settings) as (server, token):
        work = server.log_path.parent
        url = server.base + "/v2/models/forest/infer"
        wrk_env = {"BENCH_METHOD": "POST", "BENCH_TOKEN": token}
        wrk_env["BENCH_BODY_FILE"] = str(work / "body.json")
        Path(wrk_env["BENCH_BODY_FILE"]).write_text(json.dumps(body))
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

        def versions(calls=40):
            """Count of each model_version (or status) of ``calls`` answers, new connections."""
            answers = [bench.http(url, json.dumps(body).encode(), headers) for _ in range(calls)]
            found = [json.loads(raw).get("model_version", str(status)) for status, raw in answers]
            return {version: found.count(version) for version in sorted(set(found))}

        def install(version):
            hidden = work / "models" / "forest" / f".{version}"
            os.makedirs(hidden)
            shutil.copy(paths["forest"], hidden / "model.onnx")
            os.rename(hidden, hidden.with_name(str(version)))

        def window(name, during=None):
            """A measured wrk window; again (RELOAD_ATTEMPTS in all) while its connections all
            land on one worker. ``during(attempt)`` runs RELOAD_AT seconds into each attempt."""
            for attempt in range(1, RELOAD_ATTEMPTS + 1):
                timer = threading.Timer(RELOAD_AT, during or (lambda _: None), [attempt])
                timer.start()
                result = bench.measure(server, url, wrk_env, load, work / f"{name}.json", {}, None)
                timer.join()
                failed.append(result["non2xx"] + result["socket_errors"])
                if not bench.unbalanced(result, 2):
                    break
            return result | {"attempts": attempt}

        results, failed = {"versions_before": versions()}, []
        bench.wrk(url, 2, 8, wrk_env, work / "warmup.json")
        load = argparse.Namespace(duration=RELOAD_WINDOW, connections=8)
        results["before"] = window("before")
        # each attempt copies in the next version: 2, then 3 if measured again
        results["reload"] = window("reload", during=lambda attempt: install(1 + attempt))
        new = str(1 + results["reload"]["attempts"])
        lines = server.log_path.read_text().splitlines()
        results["new_version"] = new
        results["workers_loaded_it_in_reload_window"] = sum(
            f'"model forest:{new} loaded"' in line for line in lines
        )
        results["after"] = window("after")
        results["versions_after"] = versions()
    p99 = {w: results[w]["latency_ms"]["p99"] for w in ("before", "reload", "after")}
    results["goal"] = {
        "failed_requests": sum(failed),
        "p99_ms": p99,
        "p99_reload_over_before": round(p99["reload"] / p99["before"], 2),
        "p99_reload_over_after": round(p99["reload"] / p99["after"], 2),  # noise check
        "verdict": "pass"
        if sum(failed) == 0
        and p99["reload"] <= 2 * p99["before"]
        and results["versions_after"] == {new: 40}
        and results["workers_loaded_it_in_reload_window"] == 2
        else "FAIL",
    }
    return results


def load_onnx_values(path, batch):
    """The forest's predictions for ``batch`` computed in this process, to check the server."""
    from mlapi.serving.onnx import load_onnx

    return load_onnx(path).predict({"X": batch})["variable"].ravel()


MEMORY_PROBE = r"""
import json, sys, time
import numpy as np, psutil
sys.path.insert(0, sys.argv[1])
kind, path, hold = sys.argv[2], sys.argv[3], float(sys.argv[4])
from mlapi.serving import onnx as runtime  # mlapi's own imports (Flask) go in the baseline
process = psutil.Process()
def mib():
    info = process.memory_full_info()
    return {k: round(getattr(info, k) / 2**20, 1) for k in ("rss", "uss", "pss")}
out = {"start": mib()}
row = np.random.default_rng(0).normal(size=(1, 20)).astype(np.float32)
if kind == "onnx":
    import onnx, onnxruntime
    out["imported"] = mib()
    model = runtime.load_onnx(path)
    name = model.inputs[0].name
    if model.inputs[0].shape[-1] != 20:
        row = np.ones((1, model.inputs[0].shape[-1]), np.float32)
    call = lambda: model.predict({name: row})
elif kind == "lightgbm":
    import lightgbm
    out["imported"] = mib()
    model = lightgbm.Booster(model_file=path)
    call = lambda: model.predict(row, num_threads=1)
else:
    import xgboost
    out["imported"] = mib()
    model = xgboost.Booster()
    model.load_model(path)
    model.set_param({"nthread": 1})
    call = lambda: model.inplace_predict(row)
out["loaded"] = mib()
call()
out["predicted"] = mib()
if hold:
    time.sleep(hold)
    out["with_a_twin"] = mib()
started = time.process_time()
for _ in range(300):
    call()
out["single_row_cpu_us"] = round((time.process_time() - started) / 300 * 1e6, 1)
print(json.dumps(out))
"""


def probe(kind, path, twins=1):
    """Memory figures of ``twins`` processes each loading ``path`` (run side by side)."""
    hold = "3" if twins > 1 else "0"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MEMORY_PROBE, ROOT, kind, path, hold],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for _ in range(twins)
    ]
    return json.loads(procs[0].communicate(timeout=300)[0]) | {
        "other": [json.loads(p.communicate(timeout=300)[0]) for p in procs[1:]]
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=os.path.join(ROOT, "bench/results/serving.json"))
    parser.add_argument(
        "--only",
        choices=["cpu", "http", "reload"],
        help="run one case (no memory probes) and print it; with --merge, also store it",
    )
    parser.add_argument(
        "--merge", action="store_true", help="with --only: replace that case in --output"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = train(folder, forest_only=args.only == "reload")
        if args.only:
            case = {"cpu": cpu_case, "http": http_case, "reload": reload_case}[args.only]
            result = case(paths)
            print(json.dumps(result, indent=2))
            if args.merge:
                with open(args.output) as handle:
                    results = json.load(handle) | {args.only: result}
                with open(args.output, "w") as handle:
                    json.dump(results, handle, indent=2)
            return
        sizes = {name: os.path.getsize(path) for name, path in paths.items()}
        sizes["dense_external_data"] = os.path.getsize(paths["dense_external"] + ".data")
        results = {
            "file_bytes": sizes,
            "cpu": cpu_case(paths),
            "http": http_case(paths),
            "reload": reload_case(paths),
            "memory_mib": {
                "dense_50mb_embedded_two_workers": probe("onnx", paths["dense_embedded"], 2),
                "dense_50mb_external_two_workers": probe("onnx", paths["dense_external"], 2),
                "forest_onnx": probe("onnx", paths["forest"]),
                "lightgbm_native": probe("lightgbm", paths["lightgbm_text"]),
                "lightgbm_onnx": probe("onnx", paths["lightgbm_onnx"]),
                "xgboost_native": probe("xgboost", paths["xgboost_json"]),
                "xgboost_onnx": probe("onnx", paths["xgboost_onnx"]),
            },
        }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(results, handle, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
