"""OpenTelemetry tracing, on when the standard ``OTEL_*`` variables name an exporter.

Off (the default), nothing of OpenTelemetry is imported and no request pays for it:
this module's top level imports only the standard library, and every span below is
added by wrapping, at start, the few calls it measures.

On, each request is a server span (opentelemetry-instrumentation-flask, which honours
an incoming W3C ``traceparent``), with child spans for token verification
(``mlapi.auth``), each rate-limit check (``mlapi.limit``), prediction-cache reads and
writes (``mlapi.cache.get``, ``mlapi.cache.set``) and each model call
(``mlapi.model.predict``). The trace and span ids go into the request's log lines and
gunicorn's access line. Spans leave through a BatchSpanProcessor whose thread starts in
each gunicorn worker after the fork (``post_fork``), never in the master, and is flushed
and stopped when the worker exits.
"""

import functools
import logging
import os
import threading

log = logging.getLogger(__name__)

EXPORTERS = frozenset({"otlp", "console"})
HTTP_PROTOCOLS = frozenset({"http/protobuf"})
# The samplers OTEL_TRACES_SAMPLER may name (the SDK's own; it would log an unknown one and
# silently sample everything), and those that read OTEL_TRACES_SAMPLER_ARG as a ratio.
SAMPLERS = frozenset(
    {
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    }
)
# Probes and scrapes are polled every few seconds: tracing them would be mostly noise.
# OTEL_PYTHON_FLASK_EXCLUDED_URLS, when set, replaces this list.
QUIET_URLS = "/health/live$,/health/ready$,/health/metrics$,/metrics$"
TRACE_ID = "mlapi.trace_id"
SPAN_ID = "mlapi.span_id"

_lock = threading.Lock()
_state = {"provider": None, "pid": None, "deferred": False}


def exporters(environ=os.environ):
    """The span exporters the environment names; empty when tracing is off.

    Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter, or, with that variable
    unset, when an OTLP endpoint is given; ``OTEL_SDK_DISABLED=true`` turns it off.
    A value mlapi cannot honour raises config.ConfigurationError naming the variable
    (a ValueError), as a bad ``MLAPI_*`` setting does: the process stops at start.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    check_sampler(environ)
    raw = environ.get("OTEL_TRACES_EXPORTER")
    if raw is None:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        raw = "otlp" if endpoint else "none"
    names = tuple(dict.fromkeys(n.strip().lower() for n in raw.split(",") if n.strip()))
    if names in ((), ("none",)):
        return ()
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown or "none" in names:
        raise _refused(
            "OTEL_TRACES_EXPORTER",
            f"OTEL_TRACES_EXPORTER={raw!r}: mlapi supports {', '.join(sorted(EXPORTERS))} "
            "or none (comma-separated)",
            "Set OTEL_TRACES_EXPORTER to otlp, console, both comma-separated, or none",
        )
    if "otlp" in names:
        for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = environ.get(variable)
            if protocol:
                if protocol.strip().lower() not in HTTP_PROTOCOLS:
                    raise _refused(
                        variable,
                        f"{variable}={protocol!r}: mlapi exports OTLP over HTTP only",
                        f"Set {variable} to http/protobuf (the collector's port 4318) or unset it",
                    )
                break
    return names


def check_sampler(environ):
    """OTEL_TRACES_SAMPLER names a sampler of the SDK, and OTEL_TRACES_SAMPLER_ARG is a
    ratio from 0 to 1 (the SDK would log either mistake and trace every request)."""
    sampler = environ.get("OTEL_TRACES_SAMPLER", "").strip()
    if sampler and sampler.lower() not in SAMPLERS:
        raise _refused(
            "OTEL_TRACES_SAMPLER",
            f"OTEL_TRACES_SAMPLER={sampler!r} is not a sampler mlapi knows",
            f"Set OTEL_TRACES_SAMPLER to one of {', '.join(sorted(SAMPLERS))}, or unset it "
            "for parentbased_always_on",
        )
    arg = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if arg:
        try:
            ratio = float(arg)
        except ValueError:
            ratio = None
        if ratio is None or not 0 <= ratio <= 1:
            raise _refused(
                "OTEL_TRACES_SAMPLER_ARG",
                f"OTEL_TRACES_SAMPLER_ARG={arg!r} is not a ratio from 0 to 1",
                "Set OTEL_TRACES_SAMPLER_ARG to the share of traces to keep, e.g. 0.1, or unset it",
            )


def _refused(variable, problem, fix):
    # config is imported here, not at the top: this module's top level stays standard library.
    import config

    return config.refused(variable, problem, fix)


def defer_start():
    """Called by gunicorn's config in the master: workers start the exporter after the fork.

    Checks the tracing variables now, so a wrong value stops the server at start.
    """
    exporters()
    _state["deferred"] = True


def start():
    """Start this process's tracer provider and its span exporter thread (once per process)."""
    names = exporters()
    if not names:
        return
    with _lock:
        if _state["pid"] == os.getpid():
            return
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # The global provider can be set once per process: an app built twice in one
        # process keeps the first.
        if _state["provider"] is None:
            resource = Resource.create(
                {SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or "mlapi"}
            )
            provider = TracerProvider(resource=resource)
            for name in names:
                provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
            trace.set_tracer_provider(provider)
            _state["provider"] = provider
        _state["pid"] = os.getpid()
    log.info("tracing started", extra={"exporters": list(names)})


def active():
    """Whether this process has started its tracer provider and exports spans."""
    return _state["provider"] is not None and _state["pid"] == os.getpid()


def shutdown():
    """Export the spans still queued and stop the exporter thread (a worker's last act)."""
    provider = _state["provider"]
    if provider is not None and _state["pid"] == os.getpid():
        provider.shutdown()
        _state["pid"] = None


def _exporter(name):
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # Endpoint, headers, timeout, compression and certificates from the OTEL_* variables.
    return OTLPSpanExporter()


def init_app(app):
    """Trace this app when the environment names an exporter; otherwise do nothing."""
    if not exporters():
        return
    from opentelemetry import trace
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    from mlapi.extensions import limiter

    if not _state["deferred"]:
        start()
    excluded = os.environ.get("OTEL_PYTHON_FLASK_EXCLUDED_URLS", QUIET_URLS)
    FlaskInstrumentor().instrument_app(
        app, request_hook=_remember_ids, excluded_urls=excluded, enable_commenter=False
    )
    tracer = trace.get_tracer("mlapi")
    _trace_auth(tracer)
    _trace_limits(tracer, limiter)
    _trace_budget(tracer, app.extensions.get("mlapi.budget"))
    _trace_models(tracer, app.extensions["mlapi.models"])
    _trace_cache(tracer, app.extensions["mlapi.prediction_cache"])


def _remember_ids(span, environ):
    """Put the request span's ids where the log filter and gunicorn's access line read them."""
    context = span.get_span_context()
    if context.is_valid:
        environ[TRACE_ID] = format(context.trace_id, "032x")
        environ[SPAN_ID] = format(context.span_id, "016x")


def _spanned(tracer, name, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with tracer.start_as_current_span(name):
            return fn(*args, **kwargs)

    wrapper.mlapi_traced = True
    return wrapper


def _trace_auth(tracer):
    # jwt_required() calls the module-level verify_jwt_in_request of this module (a public
    # module of flask-jwt-extended, pinned; tests/system/test_tracing_otlp.py checks the span);
    # mlapi's token_required() calls token_cache.verify_request.
    from flask_jwt_extended import view_decorators

    from mlapi import token_cache

    if not getattr(token_cache.verify_request, "mlapi_traced", False):
        token_cache.verify_request = _spanned(tracer, "mlapi.auth", token_cache.verify_request)

    if not getattr(view_decorators.verify_jwt_in_request, "mlapi_traced", False):
        view_decorators.verify_jwt_in_request = _spanned(
            tracer, "mlapi.auth", view_decorators.verify_jwt_in_request
        )


def _trace_limits(tracer, limiter):
    # Every limit decorator calls limiter._check_request_limit (flask-limiter 4.1, pinned;
    # a private name, so tests/system/test_tracing_otlp.py checks the span).
    if not getattr(limiter._check_request_limit, "mlapi_traced", False):
        limiter._check_request_limit = _spanned(tracer, "mlapi.limit", limiter._check_request_limit)


def _trace_budget(tracer, budget):
    # The per-user prediction budget (mlapi/budget.py) is a limit check of its own.
    if budget is not None and not getattr(budget.spend, "mlapi_traced", False):
        budget.spend = _spanned(tracer, "mlapi.limit", budget.spend)


def _trace_models(tracer, registry):
    run = registry.run
    if getattr(run, "mlapi_traced", False):
        return

    @functools.wraps(run)
    def traced_run(model, rows, as_list=False):
        with tracer.start_as_current_span("mlapi.model.predict") as span:
            span.set_attribute("mlapi.model.name", model.name)
            span.set_attribute("mlapi.model.rows", len(rows))
            span.set_attribute("mlapi.model.version", model.version)
            return run(model, rows, as_list)

    traced_run.mlapi_traced = True
    registry.run = traced_run


def _trace_cache(tracer, prediction_cache):
    if not isinstance(prediction_cache.store, TracedStore):
        prediction_cache.store = TracedStore(prediction_cache.store, tracer)


class TracedStore:
    """A prediction-cache store whose reads and writes are spans."""

    def __init__(self, store, tracer):
        self.store = store
        self.tracer = tracer

    def get(self, key):
        with self.tracer.start_as_current_span("mlapi.cache.get") as span:
            value = self.store.get(key)
            span.set_attribute("mlapi.cache.hit", value is not None)
            return value

    def decode(self, raw):
        """A value the budget's round trip read: the same span as a read of its own."""
        with self.tracer.start_as_current_span("mlapi.cache.get") as span:
            value = self.store.decode(raw)
            span.set_attribute("mlapi.cache.hit", value is not None)
            span.set_attribute("mlapi.cache.read_with_budget", True)
            return value

    def set(self, key, value):
        with self.tracer.start_as_current_span("mlapi.cache.set"):
            return self.store.set(key, value)

    def delete(self, key):
        with self.tracer.start_as_current_span("mlapi.cache.delete"):
            return self.store.delete(key)
