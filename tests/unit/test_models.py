"""The model registry and its loaders: safe formats only, clear errors, finite outputs."""

import json
import os
import random
import struct

import numpy as np
import pytest

from mlapi import predictions
from mlapi.errors import validation_problem
from mlapi.predictions import registry
from mlapi.serving import loading
from mlapi.serving.errors import ModelLoadError, PredictionError
from mlapi.serving.loading import load_file
from mlapi.serving.models import Model, safe_average, sigmoid
from mlapi.serving.registry import ModelRegistry
from tests.helpers import LINEAR

LOGISTIC = {
    "name": "churn",
    "version": "3",
    "kind": "logistic",
    "weights": [0.5, -1.25],
    "bias": 0.1,
}


def write_json(directory, filename, content):
    path = directory / filename
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def write_npz(directory, filename, **arrays):
    path = directory / filename
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


@pytest.fixture
def model_dir(tmp_path):
    directory = tmp_path / "models"
    directory.mkdir()
    return directory


def test_builtins_keep_their_names_versions_and_results():
    """average and weighted_average are registered as before and compute the same means."""
    registry = ModelRegistry()
    assert sorted(f"{m.name}:{m.version}" for m in registry) == [
        "average:1.0",
        "weighted_average:2.0",
    ]
    batch = np.array([[1.0, 2.0, 3.0, 4.0]])
    assert registry.get("average").predict(batch).tolist() == [2.5]
    assert registry.get("weighted_average").predict(batch).tolist() == [12.0 / 5.0]


def test_weighted_average_keeps_its_four_feature_cap():
    """A fifth feature is a 422 that names the bound."""
    model = ModelRegistry().get("weighted_average")
    with pytest.raises(PredictionError, match="at most 4 features"):
        model.predict(np.ones((2, 5)))


def test_safe_average_stays_finite_near_the_float_maximum():
    """The overflow-safe mean of huge finite values is finite and right."""
    batch = np.array([[1.7e308, 1.7e308, 1.7e308], [1.0, 2.0, 3.0]])
    out = ModelRegistry().get("average").predict(batch)
    assert out[0] == pytest.approx(1.7e308)
    assert out[1] == 2.0


def _bits(value):
    return struct.pack("<d", value)


def test_a_single_row_gets_the_same_bits_without_numpy_as_in_a_batch():
    """average's plain-Python row path (Model.predict_row) against numpy's batch path on
    rows built to expose any difference in summation order: huge and tiny magnitudes,
    cancellation, signed zeros, subnormals and sums that overflow (which the row path
    leaves to the batch path). Python 3.12's sum() compensates; this loop must not."""
    rng = random.Random(13)
    pool = [1e16, -1e16, 1.0, 3.0, 1e-3, -0.0, 0.0, 5e-324, 1e308, -1e308, 0.1, -0.7]
    registry = ModelRegistry()
    model = registry.get("average")
    taken = declined = 0
    for _ in range(20_000):
        row = [
            rng.choice([*pool, rng.uniform(-1e17, 1e17), rng.uniform(-10, 10)])
            for _ in range(rng.randint(1, 9))
        ]
        fast = model.predict_row(row)
        batch = model.predict(np.asarray([row], dtype=np.float64)).tolist()[0]
        if fast is None:
            declined += 1
            continue
        taken += 1
        assert _bits(fast) == _bits(batch), row
        assert registry.predict_rows("average", [row])[1] == [batch]
    assert taken > 10_000 and declined > 1_000  # both paths were exercised


def test_the_row_path_leaves_wrong_widths_to_the_batch_path():
    """A row the model cannot take is refused with the batch path's own 422."""
    registry = ModelRegistry()
    assert registry.get("weighted_average").predict_row([1.0] * 5) is None
    with pytest.raises(PredictionError, match="at most 4 features"):
        registry.predict_rows("weighted_average", [[1.0] * 5])


def test_json_linear_model_loads_and_predicts_x_dot_w_plus_b(model_dir):
    """A JSON linear model declares its input and computes sum(x * w) + b per row."""
    model = load_file(write_json(model_dir, "price.json", LINEAR))
    assert (model.name, model.version, model.kind) == ("price", "1", "linear")
    assert model.input_tensor.metadata() == {
        "name": "features",
        "datatype": "FP64",
        "shape": [-1, 3],
    }
    assert model.input_tensor.feature_names == ("rooms", "age", "area")
    assert model.output_tensor.metadata() == {
        "name": "prediction",
        "datatype": "FP64",
        "shape": [-1],
    }
    batch = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [-4.0, 8.0, 16.0]])
    expected = np.sum(batch * np.array(LINEAR["weights"]), axis=1) + LINEAR["bias"]
    assert model.predict(batch).tolist() == expected.tolist() == [3.25, 1.5, -6.5]


def test_npz_logistic_model_loads_without_pickle(model_dir):
    """An .npz logistic model (string arrays for its names) loads and gives probabilities."""
    path = write_npz(
        model_dir,
        "churn.npz",
        name=np.array("churn"),
        version=np.array("3"),
        kind=np.array("logistic"),
        weights=np.array([0.5, -1.25]),
        bias=np.array(0.1),
        feature_names=np.array(["tenure", "tickets"]),
    )
    model = load_file(path)
    assert (model.name, model.version, model.kind) == ("churn", "3", "logistic")
    assert model.input_tensor.shape == (-1, 2)
    assert model.input_tensor.feature_names == ("tenure", "tickets")
    batch = np.array([[1.0, 2.0], [4.0, 0.0]])
    z = np.sum(batch * np.array([0.5, -1.25]), axis=1) + 0.1
    assert model.predict(batch) == pytest.approx(1 / (1 + np.exp(-z)), rel=1e-15)


def test_sigmoid_is_stable_at_the_extremes():
    """No overflow at +-1000 or +-inf: exactly 0, 1/2 and 1 where they belong."""
    z = np.array([-np.inf, -1000.0, -40.0, 0.0, 40.0, 1000.0, np.inf])
    with np.errstate(over="raise", invalid="raise"):
        out = sigmoid(z)
    assert out[0] == 0.0 and out[1] == 0.0 and out[-1] == 1.0 and out[-2] == 1.0
    assert out[3] == 0.5
    assert 0 < out[2] < 1e-17 and 1 - 1e-15 < out[4] <= 1.0


def test_logistic_model_is_finite_for_huge_inputs(model_dir):
    """Inputs near the float maximum give probabilities in [0, 1], never NaN."""
    model = load_file(write_json(model_dir, "churn.json", LOGISTIC))
    out = model.predict(np.array([[1e308, -1e308], [-1e308, 1e308], [1e-308, 0.0]]))
    assert np.isfinite(out).all()
    assert out.tolist()[:2] == [1.0, 0.0]


def test_linear_overflow_is_a_422_not_an_infinity(model_dir):
    """A linear output past the float range raises a validation problem naming the row."""
    model = load_file(write_json(model_dir, "price.json", LINEAR))
    with pytest.raises(PredictionError, match="row 1.*overflows") as info:
        model.predict(np.array([[1.0, 1.0, 1.0], [1.7e308, 0.0, 0.0]]))
    assert validation_problem(info.value).code == 422
    assert info.value.errors == [
        {"pointer": "/", "detail": "row 1: prediction overflows", "type": "overflow"}
    ]


def test_a_fixed_width_model_refuses_another_number_of_features(model_dir):
    """A 3-weight model called with 2 features is a 422 that says how many it takes."""
    model = load_file(write_json(model_dir, "price.json", LINEAR))
    with pytest.raises(PredictionError, match="exactly 3 features, got 2"):
        model.predict(np.ones((1, 2)))


class RunsCode:
    """Unpickling this makes a directory: proof that a loader ran pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_npz_with_a_pickled_object_array_is_refused_and_never_unpickled(model_dir, tmp_path):
    """An object array in an .npz is pickled; loading refuses it without running it."""
    marker = tmp_path / "pwned"
    path = write_npz(
        model_dir,
        "evil.npz",
        name=np.array("evil"),
        version=np.array("1"),
        kind=np.array("linear"),
        weights=np.array([RunsCode(str(marker))], dtype=object),
        bias=np.array(0.0),
    )
    with pytest.raises(ModelLoadError, match="allow_pickle=False") as info:
        load_file(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pkl", ".pickle", ".joblib"])
def test_pickle_files_are_refused_unread(model_dir, tmp_path, suffix):
    """A pickle file in the model folder fails the start, and is never unpickled."""
    import pickle

    marker = tmp_path / "pwned"
    path = model_dir / f"model{suffix}"
    path.write_bytes(pickle.dumps(RunsCode(str(marker))))
    with pytest.raises(ModelLoadError, match="pickle-based files are refused"):
        loading.load_dir(model_dir)
    assert not marker.exists()


def test_pickle_bytes_named_npz_are_refused_unread(model_dir, tmp_path):
    """A pickle renamed to .npz is refused by np.load(allow_pickle=False)."""
    import pickle

    marker = tmp_path / "pwned"
    path = model_dir / "model.npz"
    path.write_bytes(pickle.dumps(RunsCode(str(marker))))
    with pytest.raises(ModelLoadError, match=r"model\.npz: cannot read model file"):
        load_file(path)
    assert not marker.exists()


BAD_JSON_FILES = {
    "not JSON": ("{not json", "cannot read model file"),
    "a list": ("[1, 2]", "one JSON object"),
    "NaN weight": (
        '{"name": "m", "version": "1", "kind": "linear", "weights": [NaN], "bias": 0}',
        "NaN is not a finite number",
    ),
    "overflowing weight": (
        '{"name": "m", "version": "1", "kind": "linear", "weights": [1e400], "bias": 0}',
        "weights.0: Input should be a finite number",
    ),
    "missing weights": ({"name": "m", "version": "1", "kind": "linear", "bias": 0}, "weights"),
    "no weights": (
        {"name": "m", "version": "1", "kind": "linear", "weights": [], "bias": 0},
        "at least 1 item",
    ),
    "boolean weight": (
        {"name": "m", "version": "1", "kind": "linear", "weights": [True], "bias": 0},
        "weights.0",
    ),
    "string bias": (
        {"name": "m", "version": "1", "kind": "linear", "weights": [1], "bias": "0"},
        "bias",
    ),
    "unknown kind": (
        {"name": "m", "version": "1", "kind": "tree", "weights": [1], "bias": 0},
        "kind",
    ),
    "numeric version": (
        {"name": "m", "version": 1, "kind": "linear", "weights": [1], "bias": 0},
        "version",
    ),
    "name with a slash": (
        {"name": "a/b", "version": "1", "kind": "linear", "weights": [1], "bias": 0},
        "name: String should match pattern",
    ),
    "misspelt key": (
        {"name": "m", "version": "1", "kind": "linear", "wieghts": [1], "weights": [1], "bias": 0},
        "wieghts: Extra inputs are not permitted",
    ),
    "feature names of the wrong length": (
        {**LINEAR, "feature_names": ["a", "b"]},
        "feature_names has 2 names for 3 weights",
    ),
    "duplicate feature names": (
        {**LINEAR, "feature_names": ["a", "a", "b"]},
        "feature_names must be unique",
    ),
    "a built-in model's name": (
        {**LINEAR, "name": "average"},
        "reserved for a built-in model",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_JSON_FILES))
def test_a_bad_json_file_is_reported_naming_the_file(make_app, model_dir, case):
    """A broken file does not stop the start: it is not served, and the reason names it."""
    content, message = BAD_JSON_FILES[case]
    write_json(model_dir, "bad.json", content)
    app = make_app(MODEL_DIR=str(model_dir))
    with app.app_context():
        reason = registry().failure("bad.json")
        assert [m.name for m in registry()] == ["average", "weighted_average"]
    assert reason.startswith("bad.json: ")
    assert message in reason


BAD_NPZ_FILES = {
    "2-D weights": ({"weights": np.ones((2, 2))}, "weights must be a 1-D array"),
    "text weights": ({"weights": np.array(["1", "2"])}, "weights must be numbers"),
    "two biases": ({"bias": np.array([0.0, 1.0])}, "bias must hold a single value"),
    "bytes name": ({"name": np.array(b"m")}, "name: Input should be a valid string"),
    "unknown array": ({"scale": np.array(2.0)}, "scale: Extra inputs are not permitted"),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ_FILES))
def test_a_bad_npz_file_is_refused_naming_the_file(model_dir, case):
    """Wrong shapes or dtypes in an .npz are a ModelLoadError naming the file."""
    changes, message = BAD_NPZ_FILES[case]
    arrays = {
        "name": np.array("m"),
        "version": np.array("1"),
        "kind": np.array("linear"),
        "weights": np.array([1.0, 2.0]),
        "bias": np.array(0.5),
        **changes,
    }
    path = write_npz(model_dir, "bad.npz", **arrays)
    with pytest.raises(ModelLoadError) as info:
        load_file(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_an_npy_file_named_npz_is_refused(model_dir):
    """A bare .npy array is not a model archive."""
    path = model_dir / "model.npz"
    with open(path, "wb") as handle:
        np.save(handle, np.ones(3))
    with pytest.raises(ModelLoadError, match="not an .npz archive"):
        load_file(path)


def test_two_files_with_the_same_name_and_version_name_both(make_app, model_dir):
    """A duplicate name:version: the first file is served, the second reported naming both."""
    write_json(model_dir, "a.json", LINEAR)
    write_json(model_dir, "b.json", LINEAR)
    app = make_app(MODEL_DIR=str(model_dir))
    with app.app_context():
        assert registry().get("price").source.endswith("a.json")
        reason = registry().failure("b.json")
    assert reason == "b.json: model price:1 is already loaded from a.json"


def test_a_missing_model_dir_fails_the_start(make_app, tmp_path):
    """MLAPI_MODEL_DIR pointing nowhere is an error, not an empty registry."""
    with pytest.raises(ModelLoadError, match="is not a directory"):
        make_app(MODEL_DIR=str(tmp_path / "nowhere"))


def test_a_model_wider_than_max_features_is_not_served(make_app, model_dir):
    """A model that no request could feed is refused, with the reason."""
    write_json(model_dir, "price.json", LINEAR)
    app = make_app(MODEL_DIR=str(model_dir), MAX_FEATURES=2)
    with app.app_context():
        reason = registry().failure("price.json")
    assert "takes 3 features, more than MLAPI_MAX_FEATURES" in reason


def test_other_files_are_skipped_and_models_are_registered(make_app, model_dir, caplog):
    """README and hidden files are skipped with a warning; .json and .npz models load."""
    write_json(model_dir, "price.json", LINEAR)
    write_json(model_dir, "churn.json", LOGISTIC)
    write_json(model_dir, "price-2.json", {**LINEAR, "version": "2"})
    (model_dir / "README.md").write_text("models for the demo")
    (model_dir / ".price.json.swp").write_text("editor junk")
    app = make_app(MODEL_DIR=str(model_dir))
    with app.app_context():
        loaded = sorted(f"{m.name}:{m.version}" for m in predictions.registry())
        assert predictions.registry().get("price").version == "2"
        assert predictions.registry().versions("price") == ["1", "2"]
    assert loaded == ["average:1.0", "churn:3", "price:1", "price:2", "weighted_average:2.0"]
    assert "README.md" in caplog.text


def test_readiness_reports_every_model_name_and_version(make_app, model_dir):
    """/health/ready's models check lists built-in and loaded models as name:version."""
    write_json(model_dir, "churn.json", LOGISTIC)
    client = make_app(MODEL_DIR=str(model_dir)).test_client()
    response = client.get("/health/ready")
    assert response.status_code == 200
    check = response.get_json()["checks"]["models"]
    assert check["status"] == "ok"
    assert sorted(check["models"]) == ["average:1.0", "churn:3", "weighted_average:2.0"]


@pytest.mark.parametrize(
    ("versions", "highest"),
    [
        (["1.2", "1.10", "1.9"], "1.10"),
        (["2", "10", "9"], "10"),
        (["1.a", "1.2", "1.10"], "1.a"),
        (["beta", "1"], "beta"),
    ],
)
def test_the_default_version_is_the_highest(versions, highest):
    """Numeric parts compare as numbers; mixed versions compare without a TypeError."""
    registry = ModelRegistry(())
    for version in versions:
        registry.register(Model("m", version, "", safe_average))
    assert registry.get("m").version == highest
    assert registry.versions("m")[-1] == highest
