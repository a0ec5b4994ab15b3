"""Real models, trained on small random data and converted with the real converters."""

import numpy as np
import pytest

N_FEATURES = 8


@pytest.fixture(scope="session")
def training_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, N_FEATURES)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] > 0).astype(np.int64)
    return x, y


@pytest.fixture(scope="session")
def forest(training_data):
    """A 100-tree random forest regressor and its ONNX graph."""
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestRegressor

    x, y = training_data
    model = RandomForestRegressor(n_estimators=100, max_depth=6, random_state=0).fit(x, y)
    return model, to_onnx(model, x[:1], target_opset=17)


@pytest.fixture(scope="session")
def pipeline(training_data):
    """A scaler + logistic regression pipeline, converted without ZipMap."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = training_data
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    return model, to_onnx(model, x[:1], target_opset=17, options={"zipmap": False})


@pytest.fixture(scope="session")
def booster(training_data):
    """A LightGBM classifier and its ONNX graph from onnxmltools."""
    import lightgbm
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    x, y = training_data
    model = lightgbm.LGBMClassifier(n_estimators=30, num_leaves=15, verbose=-1).fit(x, y)
    graph = onnxmltools.convert_lightgbm(
        model,
        initial_types=[("features", FloatTensorType([None, N_FEATURES]))],
        zipmap=False,
        target_opset=15,  # the highest onnxmltools 1.16 converts to
    )
    return model, graph
