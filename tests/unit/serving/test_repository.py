"""The model repository scan, on real folders."""

import json
import os

import pytest

from mlapi.serving.errors import ModelLoadError
from mlapi.serving.repository import changes, fingerprint, scan

LINEAR = json.dumps({"name": "x", "version": "1", "kind": "linear", "weights": [1.0], "bias": 0})


def build(root, files):
    """Create ``files`` (relative path -> text, or None for an empty folder) under ``root``."""
    for relative, text in files.items():
        path = root / relative
        if text is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def config(**settings):
    return json.dumps(settings)


def test_the_default_policy_serves_the_highest_version(tmp_path):
    build(
        tmp_path,
        {
            "churn/2/model.onnx": "graph",
            "churn/10/model.onnx": "graph",
            "churn/10/model.onnx.data": "weights",
            "churn/9/model.json": LINEAR,
        },
    )

    result = scan(tmp_path)

    assert result.errors == {}
    plan = result.models["churn"]
    assert [v.version for v in plan.versions] == ["10"]
    assert plan.versions[0].path == str(tmp_path / "churn/10/model.onnx")
    assert plan.versions[0].platform == "onnx"
    assert plan.resolve() is plan.versions[0]


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ({"latest": {"num_versions": 2}}, ["2", "10"]),
        ({"latest": {"num_versions": 9}}, ["1", "2", "10"]),
        ({"all": {}}, ["1", "2", "10"]),
        ({"specific": {"versions": ["1", "10"]}}, ["1", "10"]),
    ],
)
def test_version_policies(tmp_path, policy, served):
    build(tmp_path, {f"m/{v}/model.json": LINEAR for v in ("1", "2", "10")})
    build(tmp_path, {"m/config.json": config(version_policy=policy)})

    result = scan(tmp_path)

    assert [v.version for v in result.models["m"].versions] == served
    assert {v.platform for v in result.models["m"].versions} == {"linear"}


def test_labels_name_versions_and_settings_are_kept(tmp_path):
    build(
        tmp_path,
        {
            "m/3/model.onnx": "g",
            "m/4/model.onnx": "g",
            "m/config.json": config(
                version_policy={"latest": {"num_versions": 2}},
                labels={"stable": "3", "canary": "4"},
                max_batch_size=64,
                inputs=[{"name": "features", "datatype": "FP32", "shape": [-1, 8]}],
            ),
        },
    )

    plan = scan(tmp_path).models["m"]

    assert plan.labels == {"stable": "3", "canary": "4"}
    assert plan.resolve("stable").version == "3"
    assert plan.resolve("canary").path == str(tmp_path / "m/4/model.onnx")
    assert plan.resolve("4").version == "4"
    with pytest.raises(KeyError):
        plan.resolve("5")
    assert plan.config.max_batch_size == 64
    assert plan.config.inputs[0].shape == [-1, 8]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"version_policy": {"latest": {"num_versions": 0}}},
            "num_versions: Input should be greater",
        ),
        ({"version_policy": {}}, "exactly one of latest, all or specific"),
        ({"version_policy": {"all": {}, "latest": {}}}, "exactly one of"),
        ({"version_policy": {"specific": {"versions": ["7"]}}}, "version '7', which has no folder"),
        (
            {"labels": {"canary": "1"}},
            "'canary' names version '1', which the version policy does not",
        ),
        ({"labels": {"2": "2", "1": "2"}, "version_policy": {"all": {}}}, "'1' is also the name"),
        ({"labels": {"bad label": "2"}}, "labels.bad label"),
        ({"max_batch_size": 0}, "max_batch_size: Input should be greater than or equal to 1"),
        ({"max_batch_size": "8"}, "max_batch_size: Input should be a valid integer"),
        ({"platform": "pickle"}, "platform must be one of linear, onnx"),
        ({"inputs": [{"name": "a"}, {"name": "a"}]}, "unique names"),
        ({"inputs": [{"name": "a", "datatype": "FLOAT"}]}, "datatype must be one of BOOL"),
        ({"wieghts": 1}, "wieghts: Extra inputs are not permitted"),
    ],
)
def test_an_invalid_config_is_one_error_for_its_model(tmp_path, settings, message):
    build(tmp_path, {"m/1/model.json": LINEAR, "m/2/model.json": LINEAR, "ok/1/model.json": LINEAR})
    build(tmp_path, {"m/config.json": config(**settings)})

    result = scan(tmp_path)

    assert list(result.models) == ["ok"]
    assert list(result.errors) == ["m"]
    assert result.errors["m"].startswith(f"{tmp_path / 'm'}: ")
    assert message in result.errors["m"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "config.json is not readable JSON"),
        ('{"max_batch_size": NaN}', "not readable JSON: NaN is not a number"),
        ("[" * 100_000, "not readable JSON"),
        ("[]", "config.json is invalid"),
    ],
)
def test_an_unreadable_config_is_reported(tmp_path, text, message):
    build(tmp_path, {"m/1/model.json": LINEAR, "m/config.json": text})

    assert message in scan(tmp_path).errors["m"]


def test_a_config_that_is_no_regular_file_or_too_large_is_reported(tmp_path):
    build(tmp_path, {"fifo/1/model.json": LINEAR, "big/1/model.json": LINEAR})
    os.mkfifo(tmp_path / "fifo/config.json")  # opening it would block the scan
    (tmp_path / "big/config.json").write_text(" " * (1 << 20) + "{}")

    errors = scan(tmp_path).errors

    assert "config.json is not a regular file" in errors["fifo"]
    assert "larger than 1048576 bytes" in errors["big"]


@pytest.mark.parametrize(
    ("files", "key", "message"),
    [
        ({"m/1/model.pkl": "x"}, "m", "model.pkl is refused: a pickle runs code"),
        ({"m/1/model.joblib": "x"}, "m", "Serve ONNX (.onnx) or mlapi's linear models"),
        ({"m/1/model.pt": "x"}, "m", "export the module with torch.onnx.export"),
        ({"m/1/model.txt": "x"}, "m", "convert with onnxmltools.convert_lightgbm"),
        ({"m/1/notes.md": "x"}, "m", "no model file"),
        ({"m/1/a.onnx": "x", "m/1/b.json": LINEAR}, "m", "2 model files (a.onnx, b.json)"),
        ({"m/model.onnx": "x"}, "m", "must sit in a version folder, e.g. m/1/model.onnx"),
        ({"m/config.json": "{}"}, "m", "no version folder"),
        ({"bad name/1/model.onnx": "x"}, "bad name", "a model name is 1-64 characters"),
        ({"average/1/model.onnx": "x"}, "average", "reserved for a built-in model"),
    ],
)
def test_broken_models_are_reported_and_the_others_served(tmp_path, files, key, message):
    build(tmp_path, {**files, "ok/1/model.onnx": "g"})

    result = scan(tmp_path, reserved_names={"average"})

    assert list(result.models) == ["ok"]
    assert message in result.errors[key]


def test_a_broken_version_is_reported_and_the_others_of_its_model_served(tmp_path):
    build(
        tmp_path,
        {
            "m/1/model.onnx": "g",
            "m/2/model.pkl": "x",
            "m/v 3/model.onnx": "g",
            "m/config.json": config(version_policy={"all": {}}, labels={"a": "1", "b": "2"}),
        },
    )

    result = scan(tmp_path)

    assert [v.version for v in result.models["m"].versions] == ["1"]
    assert result.models["m"].labels == {"a": "1"}
    assert "model.pkl is refused" in result.errors["m/2"]
    assert "not a version folder" in result.errors["m/v 3"]


def test_platform_in_the_config_picks_the_file(tmp_path):
    build(
        tmp_path,
        {"m/1/model.onnx": "g", "m/1/labels.json": "[]", "m/config.json": config(platform="onnx")},
    )

    assert scan(tmp_path).models["m"].versions[0].path.endswith("model.onnx")


def test_hidden_entries_are_skipped_and_flat_files_listed(tmp_path):
    build(
        tmp_path,
        {
            ".staging/1/model.onnx": "g",
            "m/.2/model.onnx": "g",
            "m/1/model.onnx": "g",
            "m/1/.model.onnx.swp": "x",
            "churn.json": LINEAR,
        },
    )

    result = scan(tmp_path)

    assert list(result.models) == ["m"]
    assert [v.version for v in result.models["m"].versions] == ["1"]
    assert result.errors == {}
    assert result.flat_files == (str(tmp_path / "churn.json"),)


def test_a_missing_repository_raises(tmp_path):
    with pytest.raises(ModelLoadError, match="is not a directory"):
        scan(tmp_path / "absent")


def test_the_fingerprint_changes_with_any_file_and_only_then(tmp_path):
    build(tmp_path, {"m/1/model.onnx": "g", "m/config.json": "{}"})
    first = fingerprint(tmp_path)
    assert fingerprint(tmp_path) == first

    seen = {first}
    (tmp_path / "m/1/model.onnx").write_text("G")  # same size
    os.utime(tmp_path / "m/1/model.onnx", ns=(1, 1))
    seen.add(fingerprint(tmp_path))
    build(tmp_path, {"m/2/model.onnx": "g"})
    seen.add(fingerprint(tmp_path))
    (tmp_path / "m/config.json").write_text('{"max_batch_size": 4}')
    seen.add(fingerprint(tmp_path))
    os.rename(tmp_path / "m/2/model.onnx", tmp_path / "m/2/other.onnx")
    seen.add(fingerprint(tmp_path))
    build(tmp_path, {"m/.tmp": "hidden"})
    assert fingerprint(tmp_path) in seen

    assert len(seen) == 5


def test_changes_between_scans(tmp_path):
    build(
        tmp_path,
        {
            "a/1/model.onnx": "g",
            "a/2/model.onnx": "g",
            "a/config.json": config(version_policy={"latest": {"num_versions": 2}}),
            "b/1/model.onnx": "g",
        },
    )
    first = scan(tmp_path)
    assert [(name, v.version) for name, v in changes(None, first).load] == [
        ("a", "1"),
        ("a", "2"),
        ("b", "1"),
    ]
    assert changes(first, scan(tmp_path)) == changes(first, first)
    assert changes(first, first).load == changes(first, first).unload == ()

    build(tmp_path, {"a/3/model.onnx": "g", "b/1/model.onnx": "changed"})
    build(
        tmp_path,
        {"a/config.json": config(version_policy={"latest": {"num_versions": 2}}, max_batch_size=8)},
    )
    second = scan(tmp_path)
    delta = changes(first, second)

    assert [(name, v.version) for name, v in delta.load] == [("a", "3"), ("b", "1")]
    assert delta.unload == (("a", "1"),)
    assert delta.reconfigured == ("a",)

    (tmp_path / "b/1/model.onnx").unlink()
    assert changes(second, scan(tmp_path)).unload == (("b", "1"),)


def test_linked_version_folders_are_followed_without_looping(tmp_path):
    root = tmp_path / "models"
    build(tmp_path, {"store/a/model.onnx": "g", "store/b/model.onnx": "g", "models/m": None})
    os.symlink(tmp_path / "store/a", root / "m/1")
    os.symlink(root, tmp_path / "store/a/loop")  # a link to an ancestor
    first = fingerprint(root)

    assert scan(root).models["m"].versions[0].path == str(root / "m/1/model.onnx")
    os.unlink(root / "m/1")
    os.symlink(tmp_path / "store/b", root / "m/1")
    assert fingerprint(root) != first
    (tmp_path / "store/b/model.onnx").write_text("changed")
    second = fingerprint(root)
    assert second != first
    assert fingerprint(root) == second
