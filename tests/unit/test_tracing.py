"""Tracing's switch: which OTEL_* values turn it on, and that off costs no import."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from config import ConfigurationError
from mlapi.observability.tracing import exporters
from tests.helpers import require_service, run_probe

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, ()),
        ({"OTEL_TRACES_EXPORTER": "none"}, ()),
        ({"OTEL_TRACES_EXPORTER": ""}, ()),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": " OTLP , console"}, ("otlp", "console")),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ("otlp",)),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
                "OTEL_TRACES_EXPORTER": "none",
            },
            (),
        ),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, ()),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            ("otlp",),
        ),
    ],
)
def test_the_environment_names_the_exporters(environ, expected):
    assert exporters(environ) == expected


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_EXPORTER": "otlp,none"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
        ({"OTEL_TRACES_SAMPLER": "probabilistic"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER_ARG": "abc"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER_ARG": "-0.1"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER_ARG": "nan"}, "OTEL_TRACES_SAMPLER_ARG"),
    ],
)
def test_a_value_mlapi_cannot_honour_is_refused_naming_the_variable(environ, variable):
    """Refused as a bad MLAPI_* setting is (tests/system/test_settings.py starts gunicorn
    and the CLI with these): ConfigurationError naming the variable and a fix."""
    with pytest.raises(ConfigurationError, match=variable) as error:
        exporters(environ)
    assert error.value.setting == variable
    assert variable in error.value.fix


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_TRACES_SAMPLER": "ParentBased_TraceIdRatio", "OTEL_TRACES_SAMPLER_ARG": "0.25"},
        {"OTEL_TRACES_SAMPLER": "always_off"},
        {"OTEL_TRACES_SAMPLER_ARG": "1"},
        {"OTEL_TRACES_SAMPLER": "bogus", "OTEL_SDK_DISABLED": "true"},
    ],
)
def test_sampler_values_the_sdk_honours_are_accepted(environ):
    assert exporters(environ) == ()


# Builds an app, serves a few requests through the whole stack, and prints which
# OpenTelemetry modules the process imported.
PROBE = """
import json, os, sys
from config import TestingConfig
from mlapi import create_app

settings = {k: getattr(TestingConfig, k) for k in dir(TestingConfig) if k.isupper()}
settings["DATABASE_URL"] = "sqlite:///" + sys.argv[1] + "/mlapi.db"
settings["REDIS_URL"] = os.environ.get("PROBE_REDIS_URL")
settings["REDIS_KEY_PREFIX"] = "mlapi-probe-%d:" % os.getpid()
app = create_app(settings, instance_path=sys.argv[1])
client = app.test_client()
statuses = [
    client.get("/").status_code,
    client.get("/public").status_code,
    client.post("/v1/predict", json=[1, 2]).status_code,
]
loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
print("PROBE", json.dumps({"statuses": statuses, "loaded": loaded}))
"""


def probe(tmp_path, **otel):
    [report] = run_probe(PROBE, str(tmp_path), env={"PATH": "/usr/bin:/bin", **otel})
    return report


def test_tracing_off_imports_no_opentelemetry_module(tmp_path):
    """The default worker never imports OpenTelemetry: no memory for it, no per-request hook."""
    report = probe(tmp_path)
    assert report["statuses"] == [200, 200, 401]
    assert report["loaded"] == []


def test_tracing_off_with_redis_imports_no_opentelemetry_module(tmp_path):
    """redis-py 8 would import the OpenTelemetry SDK's metrics on its own (config.import_redis)."""
    redis_url = os.environ.get("MLAPI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    require_service("Redis", redis_url)
    report = probe(tmp_path, PROBE_REDIS_URL=redis_url)
    assert report["statuses"] == [200, 200, 401]
    assert report["loaded"] == []


def test_tracing_off_by_name_imports_nothing_either(tmp_path):
    report = probe(tmp_path, OTEL_TRACES_EXPORTER="none", OTEL_SERVICE_NAME="mlapi")
    assert report["loaded"] == []


def test_tracing_on_loads_the_sdk(tmp_path):
    """The probe above can see OpenTelemetry when it is there (so the two tests above can fail)."""
    report = probe(
        tmp_path,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
        OTEL_BSP_SCHEDULE_DELAY="60000",
    )
    assert report["statuses"] == [200, 200, 401]
    assert "opentelemetry.sdk.trace" in report["loaded"]
    assert "opentelemetry.instrumentation.flask" in report["loaded"]


# A traced app whose one extra view writes a log line, called with a traceparent.
LOG_PROBE = """
import logging, sys
from config import TestingConfig
from mlapi import create_app

settings = {k: getattr(TestingConfig, k) for k in dir(TestingConfig) if k.isupper()}
settings["DATABASE_URL"] = "sqlite:///" + sys.argv[1] + "/mlapi.db"
app = create_app(settings, instance_path=sys.argv[1])


@app.get("/probe-log")
def probe_log():
    logging.getLogger("probe").warning("inside a traced request")
    return {}


traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
assert app.test_client().get("/probe-log", headers={"traceparent": traceparent}).status_code == 200
"""


def test_app_log_lines_carry_the_trace_and_span_ids(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", LOG_PROBE, str(tmp_path)],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "OTEL_TRACES_EXPORTER": "console"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [line] = [
        json.loads(line)
        for line in result.stdout.splitlines()
        if line.startswith("{") and '"logger": "probe"' in line
    ]
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert len(line["span_id"]) == 16 and line["span_id"] != "00f067aa0ba902b7"
    assert line["route"] == "/probe-log"
    # The console exporter printed the request span, with that id, at exit.
    assert f'"span_id": "0x{line["span_id"]}"' in result.stdout
