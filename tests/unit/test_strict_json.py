"""Responses' JSON: strict and compact, through one encoder built once per setting."""

import datetime
import math

import pytest
from flask import Flask

from mlapi.api.strict_json import StrictJSONProvider


@pytest.fixture
def provider():
    app = Flask(__name__)
    app.json = StrictJSONProvider(app)
    return app.json


def test_a_response_body_is_compact_and_refuses_non_finite_numbers(provider):
    assert provider.dumps({"a": [1.5, 2]}, separators=(",", ":")) == '{"a":[1.5,2]}'
    assert provider.dumps({"b": 1}) == '{"b":1}'
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError):
            provider.dumps({"a": bad}, separators=(",", ":"))
        with pytest.raises(ValueError):
            provider.dumps({"a": bad}, indent=2)  # any other options: the same rule


def test_flask_defaults_and_changed_settings_still_apply(provider):
    day = datetime.datetime(2026, 12, 3, tzinfo=datetime.UTC)
    assert provider.dumps({"at": day}) == '{"at":"Thu, 03 Dec 2026 00:00:00 GMT"}'
    assert provider.dumps({"b": 1, "a": 2}) == '{"b":1,"a":2}'
    provider.sort_keys = True
    assert provider.dumps({"b": 1, "a": 2}) == '{"a":2,"b":1}'
    assert provider.dumps({"é": 1}) == '{"\\u00e9":1}'
    provider.ensure_ascii = False
    assert provider.dumps({"é": 1}) == '{"é":1}'
