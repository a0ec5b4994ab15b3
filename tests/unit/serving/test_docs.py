"""docs/models.md's conversions, run as written, give models the repository serves."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlapi.serving.onnx import load_onnx
from mlapi.serving.repository import scan

DOC = Path(__file__).parents[3] / "docs" / "models.md"


@pytest.mark.slow
def test_the_documented_conversions_give_served_models(tmp_path):
    text = DOC.read_text()
    start = text.index("## From a trained model to a served version")
    section = text[start : text.index("\n## ", start + 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 3

    for block in blocks:
        subprocess.run([sys.executable, "-c", block], cwd=tmp_path, check=True, timeout=300)

    result = scan(tmp_path / "models")
    assert result.errors == {}
    assert sorted(result.models) == ["churn", "net", "risk"]
    assert (tmp_path / "models/net/1/model.onnx.data").stat().st_size > 256 * 256 * 4
    churn = load_onnx(result.models["churn"].resolve().path)
    risk = load_onnx(result.models["risk"].resolve().path)
    net = load_onnx(result.models["net"].resolve().path)
    rows = np.zeros((3, 20), np.float32)
    assert churn.predict({"X": rows})["probabilities"].shape == (3, 2)
    assert risk.predict({"features": rows})["label"].shape == (3,)
    assert net.predict({"X": rows})["probabilities"].shape == (3, 2)
