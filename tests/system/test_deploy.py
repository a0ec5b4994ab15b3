"""Deployment files: Dockerfile, compose, Kubernetes manifests, Prometheus and Grafana.

promtool (Debian's ``prometheus`` package) checks the Prometheus config, the alert
rules and their unit tests; without it those tests skip, except under ``CI=true``,
where a missing promtool fails them.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from flask import Flask
from werkzeug.serving import make_server

from config import MIN_SECRET_BYTES, Config, ConfigurationError, load_secret

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "mlapi-dashboard.json"
COMPOSE = ROOT / "compose.yaml"
# Shows the Secret's keys; kept out of kustomization.yaml so it never replaces real values.
SECRET_EXAMPLE = "secret.example.yaml"

# The metric families mlapi exports, by type (mlapi/observability/metrics.py).
METRICS = {
    "api_requests_total": "counter",
    "api_request_duration_seconds": "histogram",
    "api_requests_in_flight": "gauge",
    "predictions_total": "counter",
    "model_inference_seconds": "histogram",
    "cache_hits_total": "counter",
    "cache_misses_total": "counter",
    "cache_errors_total": "counter",
    "rate_limit_rejections_total": "counter",
    "auth_failures_total": "counter",
    "active_users": "gauge",
    "readiness_check_ok": "gauge",
}
# Series Prometheus writes itself for every scrape target.
SCRAPE_SERIES = {"up"}
ALERTS = {
    "MlapiInstanceDown",
    "MlapiNoTargets",
    "MlapiHighErrorRate",
    "MlapiHighLatencyP99",
    "MlapiRateLimitRejectionsSpike",
    "MlapiReadinessFailing",
    "MlapiAuthFailureSpike",
    "MlapiCacheErrors",
}
# Environment the image sets for Python itself and for gunicorn's command line.
PROCESS_ENV = {"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "GUNICORN_CMD_ARGS"}


def require_tool(name, hint):
    """The path of command ``name``; skip without it, but fail under CI=true."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed ({hint})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; under CI=true this is a failure, not a skip")
    pytest.skip(message)


def promtool():
    return require_tool("promtool", "Debian's prometheus package provides it")


def run(*command, cwd=ROOT):
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


def load_yaml(path):
    with open(path) as handle:
        return yaml.safe_load(handle)


# --- the tool rule -------------------------------------------------------------------


def test_require_tool_returns_the_path_of_an_installed_command():
    assert require_tool("sh", "any shell") == shutil.which("sh")


def test_require_tool_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-tool-mlapi is not installed"):
        require_tool("no-such-tool-mlapi", "none")


def test_require_tool_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="under CI=true this is a failure"):
        require_tool("no-such-tool-mlapi", "none")


# --- every YAML file -----------------------------------------------------------------

YAML_FILES = sorted(
    [COMPOSE, *DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")], key=lambda p: str(p)
)


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_file_parses_to_mappings(path):
    documents = list(yaml.safe_load_all(path.read_text()))
    assert documents
    assert all(isinstance(document, dict) and document for document in documents)


def test_yaml_files_are_found():
    names = {str(path.relative_to(ROOT)) for path in YAML_FILES}
    assert {"compose.yaml", "deploy/k8s/deployment.yaml", "deploy/prometheus/alerts.yml"} <= names


# --- environment names ---------------------------------------------------------------

ENV_READ = re.compile(
    r"""os\.environ(?:\.get|\.setdefault)?\(\s*["']([A-Z][A-Z0-9_]*)["']"""
    r"""|os\.environ\[\s*["']([A-Z][A-Z0-9_]*)["']\s*\]"""
)


def env_names_read(*paths):
    """Environment variable names the given Python files read."""
    names = set()
    for path in paths:
        for match in ENV_READ.finditer(path.read_text()):
            names.add(match.group(1) or match.group(2))
    return names


GUNICORN_ENV = env_names_read(ROOT / "gunicorn.conf.py")
APP_ENV = env_names_read(ROOT / "config.py", *sorted((ROOT / "mlapi").glob("*.py")))
CONFIG_ENV = {f"MLAPI_{key}" for key in dir(Config) if key.isupper()}


def test_env_names_read_finds_gunicorn_settings():
    assert {"WEB_CONCURRENCY", "MLAPI_REDIS_URL", "GUNICORN_GRACEFUL_TIMEOUT"} <= GUNICORN_ENV
    assert {"PROMETHEUS_MULTIPROC_DIR", "OMP_NUM_THREADS", "PORT"} <= GUNICORN_ENV
    assert "MLAPI_INSTANCE_PATH" in APP_ENV
    assert {"MLAPI_SECRET_KEY", "MLAPI_DATABASE_URL", "MLAPI_REDIS_URL"} <= CONFIG_ENV


def unknown_env(names):
    known = CONFIG_ENV | GUNICORN_ENV | APP_ENV | PROCESS_ENV
    return sorted(set(names) - known)


def dockerfile_env():
    env = {}
    for keyword, rest in final_stage():
        if keyword == "ENV":
            env.update(token.split("=", 1) for token in shlex.split(rest))
    return env


def env_sources():
    compose = load_yaml(COMPOSE)["services"]["mlapi"]["environment"]
    return {
        "configmap": k8s("ConfigMap")["data"],
        "secret": k8s("Secret")["stringData"],
        "compose": compose,
        "dockerfile": dockerfile_env(),
    }


@pytest.mark.parametrize("source", ["configmap", "secret", "compose", "dockerfile"])
def test_env_names_are_ones_mlapi_or_gunicorn_reads(source):
    names = env_sources()[source]
    assert names
    assert unknown_env(names) == []


def test_unknown_env_names_are_reported():
    assert unknown_env(["MLAPI_REDIS_URI", "WEB_CONCURENCY", "MLAPI_REDIS_URL"]) == [
        "MLAPI_REDIS_URI",
        "WEB_CONCURENCY",
    ]


# --- Dockerfile ----------------------------------------------------------------------


def dockerfile_instructions():
    """(KEYWORD, arguments) for each instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def final_stage():
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def instruction(keyword):
    found = [rest for key, rest in final_stage() if key == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, found {found}"
    return found[0]


def test_dockerfile_builds_from_python_311_slim():
    bases = [rest.split()[0] for key, rest in dockerfile_instructions() if key == "FROM"]
    assert bases and all(base == "python:3.11-slim" for base in bases)


def test_dockerfile_installs_the_pinned_requirements():
    runs = " ".join(rest for key, rest in dockerfile_instructions() if key == "RUN")
    assert "pip install -r /tmp/requirements.txt" in runs
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    requirements = [line for line in lines if line.strip() and not line.startswith("#")]
    assert requirements and all("==" in line for line in requirements)


def test_dockerfile_runs_gunicorn_as_a_numeric_non_root_user():
    user, _, group = instruction("USER").partition(":")
    assert user.isdigit() and int(user) > 0
    assert group.isdigit() and int(group) > 0
    assert json.loads(instruction("CMD")) == ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    assert instruction("EXPOSE") == "8000"


def test_dockerfile_environment():
    env = dockerfile_env()
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/tmp/prometheus"
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["PORT"] == "8000"


def healthcheck_command():
    options, _, command = instruction("HEALTHCHECK").partition("CMD ")
    assert "--timeout=" in options
    return json.loads(command)


def test_healthcheck_probes_liveness_with_python_not_curl():
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"]
    assert "/health/live" in command[2] and "urllib" in command[2]
    assert "curl" not in instruction("HEALTHCHECK")


def test_healthcheck_command_passes_on_a_live_app_and_fails_without_one(make_app):
    snippet = healthcheck_command()[2]
    server = make_server("127.0.0.1", 0, make_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {**os.environ, "PORT": str(server.server_port)}

    def probe():
        return subprocess.run([sys.executable, "-c", snippet], env=env, capture_output=True)

    try:
        assert probe().returncode == 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert probe().returncode != 0


def test_dockerignore_lets_every_copied_file_in():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    entries = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert entries[0] == "*"
    allowed = {entry[1:].rstrip("/") for entry in entries if entry.startswith("!")}
    copied = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            copied.extend(shlex.split(rest)[:-1])
    assert copied
    for source in copied:
        assert source.rstrip("/") in allowed, source
        assert (ROOT / source).exists(), source


# --- Kubernetes ----------------------------------------------------------------------


def kustomization():
    return load_yaml(K8S / "kustomization.yaml")


def k8s(kind):
    names = [*kustomization()["resources"], SECRET_EXAMPLE]
    documents = [load_yaml(K8S / name) for name in names]
    found = [document for document in documents if document["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}"
    return found[0]


def pod_spec():
    return k8s("Deployment")["spec"]["template"]["spec"]


def container():
    (only,) = pod_spec()["containers"]
    return only


def test_kustomization_lists_every_manifest_but_the_secret_example():
    manifests = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization()["resources"]) == manifests - {SECRET_EXAMPLE}
    assert (K8S / SECRET_EXAMPLE).exists()


def test_health_endpoints_exist(make_app):
    rules = {rule.rule for rule in make_app().url_map.iter_rules()}
    assert {"/health/live", "/health/ready", "/metrics"} <= rules


def test_probes_point_at_the_health_endpoints():
    c = container()
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert c["startupProbe"]["httpGet"]["path"] == "/health/live"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    ports = {port["name"]: port["containerPort"] for port in c["ports"]}
    assert ports == {"http": 8000}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] == "http"


def test_readiness_probe_outlasts_the_checks_timeout():
    assert container()["readinessProbe"]["timeoutSeconds"] > Config.READY_CHECK_TIMEOUT


def test_pod_runs_as_the_image_user_on_a_read_only_root():
    pod, c = pod_spec(), container()
    user, _, group = instruction("USER").partition(":")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(user)
    assert pod["securityContext"]["runAsGroup"] == int(group)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_tmp_is_a_writable_empty_dir_holding_every_written_path():
    mounts = {mount["mountPath"]: mount["name"] for mount in container()["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod_spec()["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert dockerfile_env()["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")
    assert k8s("ConfigMap")["data"]["MLAPI_INSTANCE_PATH"].startswith("/tmp/")


def test_env_comes_from_the_configmap_and_the_secret():
    refs = container()["envFrom"]
    assert {"configMapRef": {"name": k8s("ConfigMap")["metadata"]["name"]}} in refs
    assert {"secretRef": {"name": k8s("Secret")["metadata"]["name"]}} in refs


def test_production_settings_and_shared_state_for_several_workers():
    config, secret = k8s("ConfigMap")["data"], k8s("Secret")["stringData"]
    assert config["MLAPI_ENV"] == "production"
    assert int(config["WEB_CONCURRENCY"]) > 1
    assert "MLAPI_REDIS_URL" in secret and "MLAPI_DATABASE_URL" in secret
    assert all(isinstance(value, str) for value in config.values())


def test_secret_example_is_placeholders_that_production_refuses():
    secret = k8s("Secret")
    assert all("REPLACE-ME" in value for value in secret["stringData"].values())
    placeholder = secret["stringData"]["MLAPI_SECRET_KEY"]
    assert len(placeholder.encode()) < MIN_SECRET_BYTES
    app = Flask(__name__)
    app.config.update(ENV="production", SECRET_KEY=placeholder)
    with pytest.raises(ConfigurationError):
        load_secret(app)


def test_termination_grace_covers_the_pre_stop_sleep_and_gunicorn_drain():
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    graceful = int(k8s("ConfigMap")["data"]["GUNICORN_GRACEFUL_TIMEOUT"])
    assert pod_spec()["terminationGracePeriodSeconds"] > int(command[1]) + graceful


def test_resources_request_cpu_for_the_autoscaler():
    resources = container()["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


def test_prometheus_scrape_annotations_match_the_container():
    annotations = k8s("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == container()["ports"][0]["containerPort"]


def test_deployment_selector_matches_its_pods():
    deployment = k8s("Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_service_routes_to_the_http_port_of_the_pods():
    service = k8s("Service")
    labels = k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]


def test_hpa_scales_the_deployment_on_cpu():
    hpa = k8s("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": k8s("Deployment")["metadata"]["name"],
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_disruption_budget_selects_the_pods():
    selector = k8s("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    labels = k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_kustomize_renders_the_manifests():
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed; the manifests are checked above without it")
    rendered = list(yaml.safe_load_all(run(kubectl, "kustomize", str(K8S))))
    kinds = sorted(document["kind"] for document in rendered)
    assert kinds == sorted(load_yaml(K8S / name)["kind"] for name in kustomization()["resources"])
    (deployment,) = [document for document in rendered if document["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "mlapi:latest"


# --- compose -------------------------------------------------------------------------


def compose_services():
    return load_yaml(COMPOSE)["services"]


def test_compose_services():
    services = compose_services()
    assert set(services) == {"mlapi", "redis", "postgres", "prometheus", "grafana"}
    for name in ("mlapi", "redis", "postgres"):
        assert "profiles" not in services[name]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]


def test_compose_mlapi_settings():
    mlapi = compose_services()["mlapi"]
    env = mlapi["environment"]
    assert mlapi["build"] == "."
    assert env["WEB_CONCURRENCY"] == "4"
    assert env["MLAPI_ENV"] == "production"
    assert env["MLAPI_REDIS_URL"] == "redis://redis:6379/0"
    assert env["MLAPI_DATABASE_URL"] == "postgresql+psycopg://mlapi:mlapi@postgres:5432/mlapi"
    assert env["MLAPI_SECRET_KEY"].startswith("${MLAPI_SECRET_KEY:?")


def test_compose_database_url_matches_the_postgres_service():
    env = compose_services()["postgres"]["environment"]
    url = urlsplit(compose_services()["mlapi"]["environment"]["MLAPI_DATABASE_URL"])
    assert (url.username, url.password) == (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"])
    assert url.path.lstrip("/") == env["POSTGRES_DB"]
    assert url.hostname in compose_services()


def test_compose_waits_for_healthy_redis_and_postgres():
    services = compose_services()
    assert services["mlapi"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    for name in ("redis", "postgres"):
        assert services[name]["healthcheck"]["test"]


def test_compose_stop_grace_outlasts_gunicorn_drain():
    grace = compose_services()["mlapi"]["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > 30


def test_compose_mounts_files_that_exist():
    for name in ("prometheus", "grafana"):
        for volume in compose_services()[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source


# --- Prometheus ----------------------------------------------------------------------


def alert_rules():
    return [
        rule for group in load_yaml(PROMETHEUS / "alerts.yml")["groups"] for rule in group["rules"]
    ]


def test_prometheus_scrapes_mlapi_metrics():
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "mlapi"]
    assert job["metrics_path"] == "/metrics"
    assert job["dns_sd_configs"][0]["port"] == int(instruction("EXPOSE"))
    assert "alerts.yml" in config["rule_files"]


def test_promtool_accepts_the_config():
    run(promtool(), "check", "config", "prometheus.yml", cwd=PROMETHEUS)


def test_promtool_accepts_the_rules():
    out = run(promtool(), "check", "rules", "alerts.yml", cwd=PROMETHEUS)
    assert f"SUCCESS: {len(ALERTS)} rules found" in out


def test_alert_rules_pass_their_unit_tests():
    out = run(promtool(), "test", "rules", "alerts_test.yml", cwd=PROMETHEUS)
    assert "SUCCESS" in out


def test_alert_rules_are_the_expected_ones():
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert 'job="mlapi"' in rule["expr"]


def test_every_alert_has_a_unit_test_where_it_fires():
    tests = load_yaml(PROMETHEUS / "alerts_test.yml")["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert fired == ALERTS


def test_every_alert_is_explained_in_the_operations_guide():
    guide = (ROOT / "docs" / "operations.md").read_text()
    assert [name for name in sorted(ALERTS) if name not in guide] == []


# --- Grafana -------------------------------------------------------------------------


def dashboard():
    return json.loads(DASHBOARD.read_text())


def dashboard_panels():
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def dashboard_exprs():
    return [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]


def test_dashboard_loads_and_is_well_formed():
    board = dashboard()
    assert board["uid"] and board["title"] == "mlapi"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard_panels():
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_variables_are_defined():
    defined = {variable["name"] for variable in dashboard()["templating"]["list"]}
    used = set(re.findall(r"\$\{?(\w+)", json.dumps(dashboard()["panels"])))
    used = {name for name in used if not name.startswith("__")}
    assert used and used <= defined


@pytest.mark.parametrize(
    "title",
    [
        "Requests by endpoint and status",
        "Error ratio",
        "Latency p50 / p95 / p99",
        "Requests in flight",
        "Predictions by model and API version",
        "Model inference latency",
        "Prediction cache hit ratio",
        "Rate-limit rejections by endpoint",
        "Auth failures by reason",
        "Active users",
        "Readiness checks",
    ],
)
def test_dashboard_has_panel(title):
    assert title in {panel["title"] for panel in dashboard_panels()}


def test_dashboard_queries_are_valid_promql(tmp_path):
    tool = promtool()
    rules = []
    for number, expr in enumerate(dashboard_exprs()):
        expr = expr.replace("$__rate_interval", "5m")
        rules.append({"record": f"dashboard:query_{number}", "expr": re.sub(r"\$\w+", "x", expr)})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = run(tool, "check", "rules", str(path))
    assert f"SUCCESS: {len(rules)} rules found" in out


# --- metric names in every query ----------------------------------------------------

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
PROMQL_WORDS |= {"and", "or", "unless", "offset", "inf", "nan"}


def metric_names(expr):
    """The metric names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", expr):
        calls = expr[match.end() :].lstrip().startswith("(")
        if not calls and match.group().lower() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def is_exported(name):
    """True for a series name the app or Prometheus produces."""
    if name in SCRAPE_SERIES or METRICS.get(name) in {"counter", "gauge"}:
        return True
    base, _, suffix = name.rpartition("_")
    return suffix in {"bucket", "sum", "count"} and METRICS.get(base) == "histogram"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'histogram_quantile(0.99, sum by (le) (rate(api_x_bucket{job="a", le="+Inf"}[5m])))',
            {"api_x_bucket"},
        ),
        (
            "sum(rate(a_total[$__rate_interval])) / ignoring(status) group_left b_total",
            {"a_total", "b_total"},
        ),
        ("(sum(rate(x_total[1m])) or vector(0)) > 1e-3", {"x_total"}),
        ('absent(up{job="mlapi"} == 1)', {"up"}),
        ("foo offset 5m and on (instance) bar", {"foo", "bar"}),
        ('sum(rate(auth_total{reason="by (x) or y"}[5m])) without (pid)', {"auth_total"}),
        (
            'min by (check) (readiness_check_ok{instance=~"$instance"}) == bool 0',
            {"readiness_check_ok"},
        ),
    ],
)
def test_metric_names_extracts_the_selected_series(expr, names):
    assert metric_names(expr) == names


@pytest.mark.parametrize(
    ("name", "exported"),
    [
        ("api_requests_total", True),
        ("api_request_duration_seconds_bucket", True),
        ("model_inference_seconds_count", True),
        ("up", True),
        ("api_request_duration_seconds", False),
        ("api_requests_in_flight_bucket", False),
        ("api_requests", False),
        ("http_requests_total", False),
    ],
)
def test_is_exported(name, exported):
    assert is_exported(name) is exported


def template_query_exprs():
    """The series selectors of the dashboard's label_values() variable queries."""
    exprs = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"]["query"])
            assert match, variable["query"]
            exprs.append(match.group(1))
    return exprs


def every_expr():
    exprs = {f"dashboard: {expr}": expr for expr in dashboard_exprs() + template_query_exprs()}
    exprs.update({f"alert {rule['alert']}": rule["expr"] for rule in alert_rules()})
    for test in load_yaml(PROMETHEUS / "alerts_test.yml")["tests"]:
        for series in test["input_series"]:
            exprs[f"unit test series {series['series']}"] = series["series"]
    return exprs


def test_every_query_reads_only_exported_metrics():
    unknown = {
        where: sorted(name for name in metric_names(expr) if not is_exported(name))
        for where, expr in every_expr().items()
    }
    assert {where: names for where, names in unknown.items() if names} == {}
    assert all(metric_names(expr) for expr in every_expr().values())


def test_dashboard_shows_every_metric():
    shown = set()
    for expr in dashboard_exprs():
        for name in metric_names(expr):
            base, _, suffix = name.rpartition("_")
            shown.add(base if suffix in {"bucket", "sum", "count"} and base in METRICS else name)
    assert set(METRICS) - shown == set()


def app_source():
    return "\n".join(path.read_text() for path in sorted((ROOT / "mlapi").rglob("*.py")))


@pytest.mark.parametrize("name", METRICS)
def test_metric_is_defined_by_the_app(name):
    """Every metric the dashboards and alerts use is one the app registers."""
    assert f'"{name}"' in app_source()
