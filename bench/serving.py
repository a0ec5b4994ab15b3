"""Cost of serving trained models: CPU per call and memory per worker.

    python bench/serving.py [--output bench/results/serving.json]

Needs requirements-dev.txt (scikit-learn, skl2onnx, onnxmltools, lightgbm, xgboost).
Trains small models on random data in a temporary folder, then measures, each
memory figure in a fresh process so imports do not overlap:

- CPU time of one single-row call: a 100-tree random forest through
  ``mlapi.serving.onnx`` against a numpy linear model (the built-in kind);
- rows/s of 1,000-row batches against single rows;
- RSS/USS/PSS of two workers holding the same ~50 MB ONNX model, with its weights
  embedded and in an external data file (memory-mapped, shared);
- import and load memory, and single-row CPU, of LightGBM text and XGBoost JSON
  boosters served natively against the same boosters converted to ONNX.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
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


def train(folder):
    """Train the models; write them to ``folder``; return their paths."""
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = train(folder)
        sizes = {name: os.path.getsize(path) for name, path in paths.items()}
        sizes["dense_external_data"] = os.path.getsize(paths["dense_external"] + ".data")
        results = {
            "file_bytes": sizes,
            "cpu": cpu_case(paths),
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
