"""``flask models list`` and ``flask models check PATH``."""

import json
import math

import numpy as np
import pytest

from tests.conftest import LINEAR


@pytest.fixture
def model_dir(tmp_path):
    directory = tmp_path / "models"
    directory.mkdir()
    (directory / "price.json").write_text(json.dumps(LINEAR))
    (directory / "price-10.json").write_text(json.dumps({**LINEAR, "version": "10"}))
    return directory


@pytest.fixture
def app(make_app, model_dir):
    return make_app(MODEL_DIR=str(model_dir))


def test_list_shows_every_model_with_version_inputs_and_readiness(runner):
    """One line per model version, sorted by name then version, under a header."""
    result = runner.invoke(args=["models", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "READY", "INPUTS"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["average", "1.0", "yes"],
        ["price", "1", "yes"],
        ["price", "10", "yes"],
        ["weighted_average", "2.0", "yes"],
    ]
    assert lines[2].endswith("features FP64 [-1, 3] (rooms, age, area)")
    assert lines[1].endswith("features FP64 [-1, -1]")


def test_check_a_json_model_prints_its_prediction_on_zeros(runner, tmp_path):
    """A good linear file loads; on zeros it predicts its bias."""
    path = tmp_path / "candidate.json"
    path.write_text(json.dumps({**LINEAR, "name": "candidate", "bias": -2.25}))
    result = runner.invoke(args=["models", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}: linear model candidate:1" in result.output
    assert "input  features FP64 [-1, 3] (rooms, age, area)" in result.output
    assert "prediction on zeros: -2.25" in result.output


def test_check_an_npz_logistic_model(runner, tmp_path):
    """A good .npz logistic file predicts sigmoid(bias) on zeros."""
    path = tmp_path / "churn.npz"
    np.savez(
        path,
        name=np.array("churn"),
        version=np.array("3"),
        kind=np.array("logistic"),
        weights=np.array([0.5, -1.25]),
        bias=np.array(0.1),
    )
    result = runner.invoke(args=["models", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert f"prediction on zeros: {1 / (1 + math.exp(-0.1))!r}" in result.output


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("bad.json", '{"name": "m"}', "invalid model file: version: Field required"),
        ("bad.json", "{", "cannot read model file"),
        ("model.pkl", "not even read", "pickle-based files are refused"),
        ("model.onnx", "not a supported format", "unknown model format"),
        (
            "wide.json",
            json.dumps({**LINEAR, "weights": [1.0] * 10_001, "feature_names": None}),
            "more than MLAPI_MAX_FEATURES",
        ),
    ],
)
def test_check_a_bad_file_exits_non_zero_naming_it(runner, tmp_path, filename, content, message):
    """A bad file is exit status 1 and an error that names the file and the problem."""
    path = tmp_path / filename
    path.write_text(content)
    result = runner.invoke(args=["models", "check", str(path)])
    assert result.exit_code == 1
    assert f"Error: {path}: " in result.output
    assert message in result.output


def test_check_a_missing_file_is_a_usage_error(runner, tmp_path):
    """A path that does not exist is refused by the command line itself."""
    result = runner.invoke(args=["models", "check", str(tmp_path / "nope.json")])
    assert result.exit_code == 2
    assert "does not exist" in result.output
