"""Traces exported over real OTLP/HTTP by a real gunicorn with two workers.

A small OTLP receiver (an HTTP server decoding ExportTraceServiceRequest with
opentelemetry-proto) stands in for the collector.
"""

import gzip
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil
import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.helpers import tracing_by_worker

PASSWORD = "tracing-pass-12"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
CACHED_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


class OTLPReceiver:
    """Accepts ``POST /v1/traces`` (protobuf, optionally gzip) and keeps every span."""

    def __init__(self):
        self.spans = []  # (resource attributes, span)
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                assert self.path == "/v1/traces"
                assert self.headers["Content-Type"] == "application/x-protobuf"
                export = ExportTraceServiceRequest.FromString(body)
                with lock:
                    receiver.requests += 1
                    for resource_spans in export.resource_spans:
                        resource = attributes(resource_spans.resource.attributes)
                        for scope_spans in resource_spans.scope_spans:
                            for span in scope_spans.spans:
                                receiver.spans.append((resource, span))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def trace(self, trace_id):
        return [span for _, span in self.spans if span.trace_id.hex() == trace_id]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def attributes(pairs):
    """OTLP KeyValue list as a dict of plain Python values."""
    result = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        result[pair.key] = getattr(pair.value, kind) if kind else None
    return result


@pytest.fixture
def receiver():
    server = OTLPReceiver()
    yield server
    server.close()


@pytest.fixture
def traced_server(servers, redis_url, receiver):
    env = {
        "MLAPI_REDIS_URL": redis_url,
        "MLAPI_REDIS_KEY_PREFIX": f"mlapi-test-{uuid.uuid4().hex[:8]}:",
        "WEB_CONCURRENCY": "2",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "mlapi-under-test",
        # Nothing leaves on a timer during the test: every span below reached the
        # receiver through the flush of a worker's clean shutdown.
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
    }
    server = servers(env=env, create=False)
    assert server.flask("users", "create", "alice", "--password", PASSWORD).returncode == 0
    server.start()
    assert len(server.worker_pids()) == 2
    return server


@pytest.mark.slow
@pytest.mark.redis
def test_spans_reach_an_otlp_receiver_continuing_the_callers_trace(traced_server, receiver):
    server = traced_server
    headers = server.token("alice", PASSWORD)
    response = requests.post(
        server.url("/v1/predict"),
        json=[1, 2, 3],
        headers={**headers, "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
        timeout=10,
    )
    assert response.status_code == 200
    for _ in range(2):  # a miss, then (on either worker) a hit
        cached = requests.post(
            server.url("/predict-cached"),
            json=[4, 5],
            headers={**headers, "traceparent": f"00-{CACHED_TRACE_ID}-{PARENT_ID}-01"},
            timeout=10,
        )
        assert cached.status_code == 200
    assert cached.json()["cached"] is True

    # The exporter's thread runs in the workers only: the master has its one thread.
    assert psutil.Process(server.process.pid).num_threads() == 1
    assert receiver.requests == 0
    assert server.stop() == 0

    # The request span continues the caller's trace, with the route and status.
    spans = receiver.trace(TRACE_ID)
    by_name = {span.name: span for span in spans}
    request = by_name["POST /v1/predict"]
    assert request.parent_span_id.hex() == PARENT_ID
    assert request.kind == request.SPAN_KIND_SERVER
    request_attributes = attributes(request.attributes)
    assert request_attributes["http.route"] == "/v1/predict"
    assert request_attributes["http.status_code"] == 200

    # Token verification, each rate-limit check and the model call are its children.
    assert sorted(span.name for span in spans) == sorted(
        ["POST /v1/predict", "mlapi.auth", "mlapi.limit", "mlapi.model.predict"]
    )
    for span in spans:
        if span is not request:
            assert span.parent_span_id == request.span_id
            assert request.start_time_unix_nano <= span.start_time_unix_nano
            assert span.end_time_unix_nano <= request.end_time_unix_nano
    model = attributes(by_name["mlapi.model.predict"].attributes)
    assert model == {
        "mlapi.model.name": "average",
        "mlapi.model.rows": 1,
        "mlapi.model.version": "1.0",
    }

    # The cached endpoint: a miss that computes and stores, then a hit that does not.
    cached_spans = receiver.trace(CACHED_TRACE_ID)
    names = sorted(span.name for span in cached_spans)
    assert names.count("POST /predict-cached") == 2
    assert names.count("mlapi.cache.get") == 2
    assert names.count("mlapi.cache.set") == 1
    assert names.count("mlapi.model.predict") == 1
    hits = sorted(
        attributes(span.attributes)["mlapi.cache.hit"]
        for span in cached_spans
        if span.name == "mlapi.cache.get"
    )
    assert hits == [False, True]

    # Every span carries the service name and came from one of the two workers.
    resources = {tuple(sorted(resource.items())) for resource, _ in receiver.spans}
    assert all(dict(r)["service.name"] == "mlapi-under-test" for r in resources)

    # gunicorn's access line for that request carries the same trace and span ids.
    lines = [
        line
        for line in server.log_lines()
        if line.get("logger") == "gunicorn.access" and line.get("route") == "/v1/predict"
    ]
    assert len(lines) == 1
    assert lines[0]["trace_id"] == TRACE_ID
    assert lines[0]["span_id"] == request.span_id.hex()


@pytest.mark.slow
@pytest.mark.redis
def test_workers_report_tracing_on_with_opentelemetry_loaded(traced_server):
    """The counterpart of tests/system/test_prometheus.py's tracing-off check."""
    seen = tracing_by_worker(traced_server)
    assert seen
    for active, modules in seen.values():
        assert active == 1
        assert modules > 10


@pytest.mark.slow
@pytest.mark.redis
def test_a_request_without_traceparent_starts_a_new_trace_and_probes_are_not_traced(
    traced_server, receiver
):
    server = traced_server
    assert requests.get(server.url("/health/ready"), timeout=10).status_code == 200
    assert requests.get(server.url("/metrics"), timeout=10).status_code == 200
    assert requests.get(server.url("/public"), timeout=10).status_code == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(
        line.get("route") == "/public" for line in server.log_lines()
    ):
        time.sleep(0.1)
    assert server.stop() == 0
    names = [span.name for _, span in receiver.spans]
    assert "GET /public" in names
    assert not [name for name in names if "health" in name or "metrics" in name]
    [public] = [span for _, span in receiver.spans if span.name == "GET /public"]
    assert public.parent_span_id == b""
    [line] = [line for line in server.log_lines() if line.get("route") == "/public"]
    assert line["trace_id"] == public.trace_id.hex()
