"""Deployment files: Dockerfile, compose, Kubernetes manifests, Prometheus and Grafana.

promtool (Debian's ``prometheus`` package) checks the Prometheus config, the alert
rules and their unit tests; without it those tests skip, except under ``CI=true``,
where a missing promtool fails them.
"""

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from flask import Flask
from werkzeug.serving import make_server

from config import FILE_KEYS, MIN_SECRET_BYTES, Config, ConfigurationError, load_secret
from tests.helpers import require_service
from tests.system.servers import SECRET, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "mlapi-dashboard.json"
COMPOSE = ROOT / "compose.yaml"
# Shows the Secret's keys; kept out of kustomization.yaml so it never replaces real values.
SECRET_EXAMPLE = "secret.example.yaml"
# The buffering reverse proxy in front of gunicorn, for compose and the Kubernetes sidecar.
NGINX_CONF = K8S / "nginx.conf"
PROXY_PORT = 8080

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
# The files holding the secrets (the Docker/Kubernetes secrets convention) that config.py reads.
SECRET_FILE_ENV = {f"MLAPI_{key}_FILE" for key in FILE_KEYS}


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
APP_ENV = env_names_read(ROOT / "config.py", *sorted((ROOT / "mlapi").rglob("*.py")))
CONFIG_ENV = {f"MLAPI_{key}" for key in dir(Config) if key.isupper()}


def test_env_names_read_finds_gunicorn_settings():
    assert {"WEB_CONCURRENCY", "GUNICORN_GRACEFUL_TIMEOUT"} <= GUNICORN_ENV
    assert {"PROMETHEUS_MULTIPROC_DIR", "OMP_NUM_THREADS", "PORT"} <= GUNICORN_ENV
    assert "MLAPI_INSTANCE_PATH" in APP_ENV
    assert {"MLAPI_SECRET_KEY", "MLAPI_DATABASE_URL", "MLAPI_REDIS_URL"} <= CONFIG_ENV
    assert {
        "MLAPI_SECRET_KEY_FILE",
        "MLAPI_DATABASE_URL_FILE",
        "MLAPI_REDIS_URL_FILE",
    } == SECRET_FILE_ENV


def unknown_env(names):
    known = CONFIG_ENV | GUNICORN_ENV | APP_ENV | PROCESS_ENV | SECRET_FILE_ENV
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
    # serve.py: gunicorn -c gunicorn.conf.py wsgi:app, WEB_CONCURRENCY checked first
    # (tests/system/test_settings.py starts it).
    assert json.loads(instruction("CMD")) == ["python", "serve.py"]
    assert instruction("EXPOSE") == "8000"


def build_env(build_args):
    """The final stage's environment as ``docker build --build-arg`` NAME=VALUE makes it:
    each ARG's value (given, else its default) substituted into the ENV values."""
    args = {}
    for keyword, rest in final_stage():
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = build_args.get(name, default)
    pattern = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")
    return {
        name: pattern.sub(lambda m: args.get(m.group(1), m.group(0)), value)
        for name, value in dockerfile_env().items()
    }


def test_build_env_substitutes_build_args_and_keeps_other_references():
    env = build_env({"MLAPI_BUILD_COMMIT": "1a2b3c4"})
    assert env["MLAPI_BUILD_COMMIT"] == "1a2b3c4"
    assert env["PATH"] == "/opt/venv/bin:$PATH"  # the base image's, at run time


def test_dockerfile_passes_the_build_commit_to_the_app(tmp_path):
    """docker build --build-arg MLAPI_BUILD_COMMIT=$(git rev-parse --short HEAD) (as the
    Dockerfile's header and docs/operations.md say) labels mlapi_build_info with it."""
    assert "MLAPI_BUILD_COMMIT" in [
        rest.split("=")[0] for key, rest in final_stage() if key == "ARG"
    ]
    assert build_env({})["MLAPI_BUILD_COMMIT"] == "unknown"  # built without the argument
    header = (ROOT / "Dockerfile").read_text()
    assert "--build-arg MLAPI_BUILD_COMMIT=$(git rev-parse --short HEAD)" in header
    commit = "c0ffee1"
    env = {
        **os.environ,
        "MLAPI_BUILD_COMMIT": build_env({"MLAPI_BUILD_COMMIT": commit})["MLAPI_BUILD_COMMIT"],
    }
    probe = "from mlapi.observability.metrics import build_labels; print(build_labels()['commit'])"
    # Outside the repository's checkout, as in the image (no .git to ask).
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == commit


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


def test_env_comes_from_the_configmap_and_secrets_from_files():
    refs = container()["envFrom"]
    assert refs == [{"configMapRef": {"name": k8s("ConfigMap")["metadata"]["name"]}}]
    (volume,) = [v for v in pod_spec()["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == k8s("Secret")["metadata"]["name"]
    assert volume["secret"]["defaultMode"] == 0o440
    (mount,) = [m for m in container()["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    files = {item["name"]: item["value"] for item in container()["env"]}
    assert files == {
        f"{key}_FILE": f"{mount['mountPath']}/{key}" for key in k8s("Secret")["stringData"]
    }
    assert set(files) == SECRET_FILE_ENV


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
    assert [port["targetPort"] for port in service["spec"]["ports"]] == [PROXY_PORT]


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
    files = [load_yaml(K8S / name)["kind"] for name in kustomization()["resources"]]
    assert kinds == sorted([*files, "ConfigMap"])  # and the proxy's generated ConfigMap
    (deployment,) = [document for document in rendered if document["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "mlapi:1.0.0"


# --- compose -------------------------------------------------------------------------


def compose_services():
    return load_yaml(COMPOSE)["services"]


def test_compose_services():
    services = compose_services()
    assert set(services) == {"proxy", "mlapi", "redis", "postgres", "prometheus", "grafana"}
    for name in ("proxy", "mlapi", "redis", "postgres"):
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


# Compose mounts each secret a service lists at /run/secrets/NAME.
RUN_SECRETS = "/run/secrets/"


def compose_secrets():
    """Each top-level secret's name and the file it is read from (under ROOT)."""
    return {name: spec["file"] for name, spec in load_yaml(COMPOSE)["secrets"].items()}


@pytest.mark.parametrize(
    ("service", "settings"),
    [
        ("mlapi", {"MLAPI_SECRET_KEY", "MLAPI_DATABASE_URL"}),
        ("postgres", {"POSTGRES_PASSWORD"}),
        ("grafana", {"GF_SECURITY_ADMIN_PASSWORD"}),
    ],
)
def test_compose_passes_secrets_as_mounted_files_not_variables(service, settings):
    spec = compose_services()[service]
    env = spec["environment"]
    assert not settings & set(env)  # never the value itself
    for setting in settings:
        # Grafana's convention is a double underscore.
        path = env.get(f"{setting}_FILE") or env[f"{setting}__FILE"]
        assert path.startswith(RUN_SECRETS)
        assert path.removeprefix(RUN_SECRETS) in spec["secrets"]
    assert set(spec["secrets"]) <= set(compose_secrets())
    assert not any(
        re.search(r"PASSWORD|SECRET", name) for name in env if not name.endswith("_FILE")
    )


def run_compose_secrets(folder):
    return subprocess.run(
        [str(ROOT / "scripts" / "compose-secrets"), str(folder)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )


def test_compose_secrets_script_writes_every_file_compose_reads(tmp_path):
    """scripts/compose-secrets FOLDER writes what ./secrets must hold; the database URL
    names the postgres service's user, database and password."""
    folder = tmp_path / "secrets"
    run_compose_secrets(folder)
    files = {name: folder / Path(path).name for name, path in compose_secrets().items()}
    assert all(Path(path).parent == Path("./secrets") for path in compose_secrets().values())
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in files.values())
    values = {name: path.read_text().strip() for name, path in files.items()}
    assert len(values["mlapi_secret_key"].encode()) >= MIN_SECRET_BYTES
    postgres = compose_services()["postgres"]["environment"]
    url = urlsplit(values["mlapi_database_url"])
    assert (url.username, url.password) == (postgres["POSTGRES_USER"], values["postgres_password"])
    assert url.path.lstrip("/") == postgres["POSTGRES_DB"]
    assert url.hostname in compose_services()
    assert folder.stat().st_mode & 0o777 == 0o700
    run_compose_secrets(folder)  # a second run keeps the values
    assert {name: path.read_text().strip() for name, path in files.items()} == values
    assert (ROOT / ".gitignore").read_text().splitlines().count("secrets/") == 1


def test_the_app_reads_the_secret_files_compose_mounts(servers, tmp_path):
    """mlapi started with the environment compose gives it, each /run/secrets/NAME file
    present: the key signs the tokens and the URL reaches the database (this host's
    PostgreSQL and Redis stand in for the compose services)."""
    import jwt

    postgres_url = os.environ.get(
        "MLAPI_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    redis_url = os.environ.get("MLAPI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    require_service("PostgreSQL", postgres_url)
    require_service("Redis", redis_url)
    run_compose_secrets(tmp_path / "secrets")
    mounted = tmp_path / "run-secrets"
    mounted.mkdir()
    for name in compose_services()["mlapi"]["secrets"]:
        (mounted / name).write_text((tmp_path / "secrets" / name).read_text())
    (mounted / "mlapi_database_url").write_text(postgres_url + "\n")
    env = {
        name: value.replace(RUN_SECRETS, f"{mounted}/")
        for name, value in compose_services()["mlapi"]["environment"].items()
    }
    env.update(
        MLAPI_SECRET_KEY="",  # the test servers' default key: the file must supply it
        MLAPI_REDIS_URL=redis_url,
        MLAPI_REDIS_KEY_PREFIX=f"mlapi-compose-{os.getpid()}:",
        MLAPI_TRUSTED_PROXIES="0",
        WEB_CONCURRENCY="2",
    )
    server = servers(env=env)
    ready = requests.get(server.url("/health/ready"), timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["database"]["status"] == "ok"
    username, password = f"compose{os.getpid()}", secrets.token_urlsafe(16)
    created = server.flask("users", "create", username, "--password", password)
    assert created.returncode == 0, created.stderr
    token = server.token(username, password)["Authorization"].split()[1]
    key = (mounted / "mlapi_secret_key").read_text().strip()
    assert jwt.decode(token, key, algorithms=["HS256"])["sub"]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, SECRET, algorithms=["HS256"])


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


# --- the buffering proxy (nginx) ------------------------------------------------------


def nginx():
    return require_tool("nginx", "Debian's nginx package provides it; .ci/run installs it")


def nginx_directives(text=None):
    """{directive: [arguments, ...]} of nginx.conf, comments and blocks flattened."""
    text = re.sub(r"#[^\n]*", "", text if text is not None else NGINX_CONF.read_text())
    found = {}
    for statement in re.split(r"[;{}]", text):
        words = statement.split()
        if words:
            found.setdefault(words[0], []).append(" ".join(words[1:]))
    return found


def gunicorn_default(name):
    """The default gunicorn.conf.py gives setting ``name`` when the variable is unset."""
    text = (ROOT / "gunicorn.conf.py").read_text()
    match = re.search(rf"""os\.environ\.get\(["']{name}["'],\s*["'](\d+)["']\)""", text)
    assert match, name
    return int(match.group(1))


def nginx_config_for_test(directory, upstream, port):
    """The shipped nginx.conf with its upstream, port and /tmp paths moved for this machine."""
    text = NGINX_CONF.read_text()
    assert text.count("server mlapi-app:8000;") == 1 and text.count(f"listen {PROXY_PORT};") == 1
    text = text.replace("server mlapi-app:8000;", f"server {upstream};")
    text = text.replace(f"listen {PROXY_PORT};", f"listen 127.0.0.1:{port};")
    assert text.count(" /tmp/") == len(nginx_directives()["pid"]) + 5  # the six paths
    text = text.replace(" /tmp/", f" {directory}/")
    path = directory / "nginx.conf"
    path.write_text(text)
    return path


def nginx_command(path):
    command = [nginx(), "-e", "stderr", "-c", str(path)]
    if os.geteuid() == 0:  # a root master would run its workers as nobody, outside tmp_path
        command += ["-g", "user root;"]
    return command


def test_nginx_directives_reads_the_config():
    found = nginx_directives("a 1; # b 2;\nhttp { c x  y; server { c z; } }")
    assert found == {"a": ["1"], "http": [""], "c": ["x y", "z"], "server": [""]}


def test_nginx_accepts_the_shipped_config(tmp_path):
    path = nginx_config_for_test(tmp_path, "127.0.0.1:8000", 18080)
    result = subprocess.run(
        [*nginx_command(path), "-t"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr


def test_nginx_limits_match_the_app():
    found = nginx_directives()
    assert found["client_max_body_size"] == ["1m"]
    assert Config.MAX_CONTENT_LENGTH == 1024 * 1024
    assert found["proxy_request_buffering"] == ["on"]
    assert found["proxy_buffering"] == ["on"]
    # Idle upstream connections close on nginx's side first, before gunicorn's keep-alive.
    assert found["keepalive_timeout"][0] == "4s"
    assert int(found["keepalive_timeout"][0][:-1]) < gunicorn_default("GUNICORN_KEEPALIVE")
    # No answer takes longer than gunicorn lets a worker be silent.
    timeout = gunicorn_default("GUNICORN_TIMEOUT")
    assert found["proxy_read_timeout"] == [f"{timeout}s"]
    assert int(k8s("ConfigMap")["data"]["GUNICORN_TIMEOUT"]) == timeout
    # A request head and a pause in a body are bounded; idle client connections outlive
    # the upstream keep-alive of a proxy in front (ingress-nginx: 60 s).
    assert found["client_header_timeout"] == ["10s"]
    assert found["client_body_timeout"] == ["10s"]
    assert int(found["keepalive_timeout"][1][:-1]) > 60


def test_nginx_forwards_the_client_address_for_one_trusted_hop():
    found = nginx_directives()
    headers = dict(value.split(" ", 1) for value in found["proxy_set_header"])
    assert headers["X-Forwarded-For"] == "$proxy_add_x_forwarded_for"
    assert headers["X-Forwarded-Proto"] == "$mlapi_forwarded_proto"
    assert headers["X-Forwarded-Host"] == "$mlapi_forwarded_host"
    assert k8s("ConfigMap")["data"]["MLAPI_TRUSTED_PROXIES"] == "1"
    assert compose_services()["mlapi"]["environment"]["MLAPI_TRUSTED_PROXIES"] == "1"


def test_nginx_writes_only_under_tmp():
    found = nginx_directives()
    paths = [found["pid"][0]] + [found[key][0] for key in found if key.endswith("_temp_path")]
    assert len(paths) == 6 and all(path.startswith("/tmp/") for path in paths)


class Nginx:
    """nginx with the shipped config in front of a real gunicorn."""

    def __init__(self, directory, upstream):
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.path = nginx_config_for_test(directory, upstream, self.port)
        self.log_path = directory / "nginx.log"
        self.process = None

    def start(self):
        self.log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            nginx_command(self.path), stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_until(self._listening, timeout=10, what=f"nginx on port {self.port}")
        return self

    def _listening(self):
        import socket

        assert self.process.poll() is None, self.log_path.read_text()
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.log.close()


@pytest.fixture
def proxied(servers, tmp_path):
    """(nginx, gunicorn): mlapi under gunicorn as deployed, behind the shipped nginx.conf."""
    nginx()
    app = servers(env={"MLAPI_TRUSTED_PROXIES": "1"})
    proxy = Nginx(tmp_path / "nginx", f"127.0.0.1:{app.port}").start()
    yield proxy, app
    proxy.stop()


def slow_socket(port, first_bytes):
    import socket

    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(first_bytes)
    sock.setblocking(False)
    return sock


def closed_by_server(sock):
    """True once the server closed the connection (any answer it sent before is read)."""
    try:
        while True:
            if not sock.recv(65536):
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.mark.slow
def test_slow_clients_are_held_by_nginx_and_cut_off_while_normal_clients_are_served(proxied):
    """gunicorn (1 worker, 4 threads) never sees the slow requests; nginx ends them."""
    import time

    import requests

    proxy, _ = proxied
    head = b"GET /health/live HTTP/1.1\r\nHost: mlapi\r\n"
    body_head = (
        b"POST /token HTTP/1.1\r\nHost: mlapi\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\n"
    )
    started = time.monotonic()
    trickling_heads = [slow_socket(proxy.port, head) for _ in range(20)]
    trickling_bodies = [slow_socket(proxy.port, body_head + b"u") for _ in range(20)]
    stalled_bodies = [slow_socket(proxy.port, body_head + b"u") for _ in range(20)]
    closed_at = {}
    latencies = []
    try:
        while time.monotonic() - started < 14:
            for sock in trickling_heads + trickling_bodies:
                if sock not in closed_at:
                    try:
                        sock.send(b"x")
                    except OSError:
                        closed_at[sock] = time.monotonic() - started
            for sock in trickling_heads + stalled_bodies:
                if sock not in closed_at and closed_by_server(sock):
                    closed_at[sock] = time.monotonic() - started
            before = time.monotonic()
            response = requests.get(proxy.url("/health/live"), timeout=5)
            latencies.append(time.monotonic() - before)
            assert response.status_code == 200
            time.sleep(0.5)
    finally:
        for sock in trickling_heads + trickling_bodies + stalled_bodies:
            sock.close()
    assert len(latencies) > 15 and max(latencies) < 1.0
    # A head that never ends gets 10 s in total (client_header_timeout); a body that stops
    # gets 10 s without a byte (client_body_timeout).
    for sock in trickling_heads + stalled_bodies:
        assert sock in closed_at
        assert 9 <= closed_at[sock] <= 13
    # A body that keeps trickling stays with nginx, costing no gunicorn thread.
    assert not any(sock in closed_at for sock in trickling_bodies)


@pytest.mark.slow
def test_nginx_answers_its_own_errors_as_problems(proxied):
    import requests

    proxy, app = proxied
    response = requests.post(proxy.url("/token"), data=b"x" * (1024 * 1024 + 1), timeout=10)
    assert response.status_code == 413
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == 413
    assert requests.get(app.url("/metrics"), timeout=5).status_code == 200
    response = requests.get(proxy.url("/metrics"), timeout=5)
    assert response.status_code == 404
    assert response.json()["detail"] == "Metrics are not served through the proxy."
    app.stop()
    response = requests.get(proxy.url("/health/live"), timeout=10)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json() == {
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "The service is not answering; try again shortly.",
    }


def request_from(address, port, path, headers=b""):
    """A GET sent from local ``address`` (any of 127.0.0.0/8); the status code answered."""
    import socket

    with socket.create_connection(
        ("127.0.0.1", port), timeout=5, source_address=(address, 0)
    ) as sock:
        sock.sendall(
            b"GET %s HTTP/1.1\r\nHost: mlapi\r\nConnection: close\r\n%s\r\n" % (path, headers)
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer.split(b"\r\n", 1)[0].split(b" ", 2)[1]


@pytest.mark.slow
def test_the_app_sees_the_client_address_that_nginx_forwards(proxied):
    proxy, app = proxied
    assert request_from("127.0.0.2", proxy.port, b"/users/me") == b"401"
    # A client's own X-Forwarded-For is kept in front of the address nginx appends, and
    # with one trusted hop the app reads only the latter: no spoofing.
    spoofed = b"X-Forwarded-For: 203.0.113.9\r\n"
    assert request_from("127.0.0.3", proxy.port, b"/users/me", spoofed) == b"401"

    def clients():
        return [line.get("client") for line in app.log_lines() if line.get("path") == "/users/me"]

    # gunicorn writes its access line after the response has gone out.
    wait_until(lambda: len(clients()) == 2, timeout=10, what="two access log lines")
    assert clients() == ["127.0.0.2", "127.0.0.3"]


# --- Kubernetes: every manifest against the API schemas --------------------------------

K8S_INGRESS = DEPLOY / "k8s-ingress-nginx"
K8S_EXTRAS = DEPLOY / "k8s-extras"
# The oldest Kubernetes the manifests support (native sidecars are on by default from 1.29)
# and the newest whose schemas the pinned kubernetes-validate ships.
K8S_VERSIONS = ["1.29.0", "latest"]
# Custom resources: no schema in kubernetes-validate; each is validated against the JSON
# Schema of its CRD vendored in tests/system/schemas (its source and version in $comment).
CUSTOM_KINDS = {"PodMonitor": "podmonitor-v1.schema.json"}
SCHEMAS = Path(__file__).parent / "schemas"

MANIFESTS = sorted(
    path
    for folder in (K8S, K8S_INGRESS, K8S_EXTRAS)
    for path in folder.glob("*.yaml")
    if path.name != "kustomization.yaml"
)


def validate_manifest(document, version):
    """Strict validation (unknown fields are errors) against the Kubernetes API's schema."""
    import kubernetes_validate

    if version == "latest":
        version = kubernetes_validate.latest_version()
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{document['kind']} {document['metadata']['name']}: {error.message}")


def test_kubernetes_validate_rejects_an_unknown_field():
    service = load_yaml(K8S / "service.yaml")
    service["spec"]["ports"][0]["targetPortt"] = 8080
    with pytest.raises(pytest.fail.Exception, match="'targetPortt' was unexpected"):
        validate_manifest(service, K8S_VERSIONS[0])


def test_manifests_are_found():
    names = {str(path.relative_to(DEPLOY)) for path in MANIFESTS}
    assert {
        "k8s/deployment.yaml",
        "k8s-ingress-nginx/ingress.yaml",
        "k8s-ingress-nginx/networkpolicy.yaml",
        "k8s-extras/podmonitor.yaml",
        "k8s-extras/first-admin-job.yaml",
    } <= names


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "path",
    [path for path in MANIFESTS if load_yaml(path)["kind"] not in CUSTOM_KINDS],
    ids=lambda p: str(p.relative_to(DEPLOY)),
)
def test_manifest_matches_the_kubernetes_schema(path, version):
    validate_manifest(load_yaml(path), version)


def validate_custom_resource(document):
    """Strict validation (unknown fields are errors) against the vendored CRD schema."""
    import jsonschema

    schema = json.loads((SCHEMAS / CUSTOM_KINDS[document["kind"]]).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda error: list(error.path))
    if errors:
        where = "/".join(str(part) for part in errors[0].path)
        pytest.fail(
            f"{document['kind']} {document['metadata']['name']}: {where}: {errors[0].message}"
        )


def test_vendored_crd_schemas_are_valid_json_schemas_naming_their_source():
    import jsonschema

    for name in CUSTOM_KINDS.values():
        schema = json.loads((SCHEMAS / name).read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        assert re.search(r"Prometheus Operator v\d+\.\d+\.\d+", schema["$comment"])


@pytest.mark.parametrize(
    "path",
    [path for path in MANIFESTS if load_yaml(path)["kind"] in CUSTOM_KINDS],
    ids=lambda p: str(p.relative_to(DEPLOY)),
)
def test_custom_resource_matches_its_crd_schema(path):
    validate_custom_resource(load_yaml(path))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["spec"]["podMetricsEndpoints"][0].update(intervall="15s"), "'intervall'"),
        (lambda m: m["spec"]["podMetricsEndpoints"][0].update(interval="15 s"), "does not match"),
        (lambda m: m["spec"]["podMetricsEndpoints"][0].update(scheme="tcp"), "is not one of"),
        (lambda m: m["spec"].pop("selector"), "'selector' is a required property"),
        (lambda m: m["spec"].update(podMetricsEndpoint=[]), "'podMetricsEndpoint'"),
    ],
    ids=["unknown field", "bad duration", "bad enum", "missing selector", "misspelt list"],
)
def test_crd_schema_validation_rejects_a_broken_pod_monitor(change, message):
    monitor = load_yaml(K8S_EXTRAS / "podmonitor.yaml")
    change(monitor)
    with pytest.raises(pytest.fail.Exception, match=message):
        validate_custom_resource(monitor)


def kustomize(folder):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed; each manifest is validated above without it")
    return list(yaml.safe_load_all(run(kubectl, "kustomize", str(folder))))


@pytest.mark.parametrize("folder", [K8S, K8S_INGRESS], ids=["k8s", "k8s-ingress-nginx"])
def test_rendered_kustomizations_match_the_kubernetes_schema(folder):
    for document in kustomize(folder):
        for version in K8S_VERSIONS:
            validate_manifest(document, version)


def test_ingress_overlay_trusts_two_proxies_and_adds_ingress_and_policy():
    rendered = kustomize(K8S_INGRESS)
    kinds = sorted(document["kind"] for document in rendered)
    assert kinds == sorted(
        [*(document["kind"] for document in kustomize(K8S)), "Ingress", "NetworkPolicy"]
    )
    (config,) = [
        d for d in rendered if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mlapi-config"
    ]
    assert config["data"]["MLAPI_TRUSTED_PROXIES"] == "2"


# --- Kubernetes: the proxy sidecar ----------------------------------------------------


def proxy_sidecar():
    (sidecar,) = pod_spec()["initContainers"]
    return sidecar


def test_proxy_is_a_native_sidecar_that_the_service_alone_reaches():
    sidecar = proxy_sidecar()
    assert sidecar["restartPolicy"] == "Always"
    assert [port["containerPort"] for port in sidecar["ports"]] == [PROXY_PORT]
    service_ports = [port["targetPort"] for port in k8s("Service")["spec"]["ports"]]
    assert service_ports == [PROXY_PORT]
    app_ports = {port["containerPort"] for port in container()["ports"]}
    assert not app_ports & set(service_ports)
    assert f"listen {PROXY_PORT};" in NGINX_CONF.read_text()


def test_proxy_reaches_the_app_by_the_name_nginx_conf_uses():
    assert "server mlapi-app:8000;" in NGINX_CONF.read_text()
    assert {"ip": "127.0.0.1", "hostnames": ["mlapi-app"]} in pod_spec()["hostAliases"]
    assert container()["ports"][0]["containerPort"] == 8000
    aliases = compose_services()["mlapi"]["networks"]["default"]["aliases"]
    assert aliases == ["mlapi-app"]


def test_proxy_runs_the_shipped_nginx_conf_read_only():
    sidecar = proxy_sidecar()
    mounts = {mount["name"]: mount for mount in sidecar["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod_spec()["volumes"]}
    (config,) = [name for name in mounts if "configMap" in volumes[name]]
    generated = volumes[config]["configMap"]["name"]
    (generator,) = [g for g in kustomization()["configMapGenerator"] if g["name"] == generated]
    assert generator["files"] == [NGINX_CONF.name]
    config_path = f"{mounts[config]['mountPath']}/nginx.conf"
    assert sidecar["command"] == ["nginx", "-e", "stderr", "-c", config_path]
    assert "emptyDir" in volumes[mounts["proxy-tmp"]["name"]]
    assert mounts["proxy-tmp"]["mountPath"] == "/tmp"
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    compose = compose_services()["proxy"]
    assert compose["command"] == sidecar["command"]
    assert compose["volumes"] == [
        f"./deploy/k8s/nginx.conf:{mounts[config]['mountPath']}/nginx.conf:ro"
    ]
    assert compose["read_only"] is True and compose["tmpfs"] == ["/tmp"]
    assert compose["ports"] == [f"{PROXY_PORT}:{PROXY_PORT}"]
    assert "ports" not in compose_services()["mlapi"]


def test_every_pod_container_has_resources_and_probes():
    for each in [*pod_spec()["initContainers"], *pod_spec()["containers"]]:
        assert {"cpu", "memory"} <= set(each["resources"]["requests"]), each["name"]
        assert {"cpu", "memory"} <= set(each["resources"]["limits"]), each["name"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert probe in each, (each["name"], probe)


def test_replicas_spread_over_nodes_and_zones():
    constraints = pod_spec()["topologySpreadConstraints"]
    labels = k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert {c["topologyKey"] for c in constraints} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    for constraint in constraints:
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
        assert constraint["matchLabelKeys"] == ["pod-template-hash"]


def every_image():
    """(where, image) for every container image the deployment files name."""
    images = [(f"compose {name}", s["image"]) for name, s in compose_services().items()]
    for path in MANIFESTS:
        document = load_yaml(path)
        spec = document.get("spec", {}).get("template", {}).get("spec", {})
        for each in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            images.append((f"{path.name} {each['name']}", each["image"]))
    return images


def test_images_are_pinned_to_a_release():
    images = dict(every_image())
    assert len(images) >= 9
    for where, image in images.items():
        name, _, tag = image.rpartition(":")
        if where.startswith("deployment.yaml mlapi"):  # kustomization.yaml sets its tag
            (pinned,) = kustomization()["images"]
            assert image == pinned["name"]
            name, tag = pinned["newName"], pinned["newTag"]
        assert name and tag and tag != "latest" and "latest" not in image, where
        assert re.fullmatch(r"v?\d+(\.\d+){1,2}(-[a-z]+)?", tag), (where, tag)
    tag = kustomization()["images"][0]["newTag"]
    assert compose_services()["mlapi"]["image"] == f"mlapi:{tag}"
    assert images["first-admin-job.yaml create-admin"] == f"mlapi:{tag}"


def test_network_policy_admits_the_ingress_to_the_proxy_and_prometheus_to_the_app():
    policy = load_yaml(K8S_INGRESS / "networkpolicy.yaml")
    labels = k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    ports = [[port["port"] for port in rule["ports"]] for rule in policy["spec"]["ingress"]]
    assert ports == [[PROXY_PORT], [container()["ports"][0]["containerPort"]]]


def test_ingress_limits_match_the_proxy():
    ingress = load_yaml(K8S_INGRESS / "ingress.yaml")
    annotations = {
        key.removeprefix("nginx.ingress.kubernetes.io/"): value
        for key, value in ingress["metadata"]["annotations"].items()
    }
    found = nginx_directives()
    assert annotations["proxy-body-size"] == found["client_max_body_size"][0]
    assert annotations["proxy-request-buffering"] == "on"
    assert f"{annotations['proxy-read-timeout']}s" == found["proxy_read_timeout"][0]
    assert annotations["proxy-next-upstream"] == "error"
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    assert backend["name"] == k8s("Service")["metadata"]["name"]
    assert backend["port"]["name"] == k8s("Service")["spec"]["ports"][0]["name"]
    assert ingress["spec"]["ingressClassName"] == "nginx"


def test_pod_monitor_scrapes_the_app_port_as_job_mlapi():
    monitor = load_yaml(K8S_EXTRAS / "podmonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"jobLabel", "selector", "podMetricsEndpoints"}
    labels = k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert labels[monitor["spec"]["jobLabel"]] == "mlapi"  # the job the rules select
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == container()["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    assert int(endpoint["scrapeTimeout"][:-1]) < int(endpoint["interval"][:-1])


# --- Kubernetes: the first administrator ----------------------------------------------


def first_admin_job():
    return load_yaml(K8S_EXTRAS / "first-admin-job.yaml")


def test_first_admin_job_has_the_app_settings_and_secret_files():
    job = first_admin_job()
    (job_container,) = job["spec"]["template"]["spec"]["containers"]
    assert job_container["envFrom"] == container()["envFrom"]
    files = [item for item in job_container["env"] if item["name"].endswith("_FILE")]
    assert files == container()["env"]
    job_volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    app_volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    assert job_volumes["secrets"] == app_volumes["secrets"]
    assert job["spec"]["template"]["spec"]["securityContext"] == pod_spec()["securityContext"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


@pytest.mark.slow
def test_first_admin_job_command_creates_an_admin_once(servers):
    """The Job's command, with the example Secret's values, run against a real database."""
    job = first_admin_job()
    (job_container,) = job["spec"]["template"]["spec"]["containers"]
    secret = load_yaml(K8S_EXTRAS / "first-admin.secret.example.yaml")
    assert secret["metadata"]["name"] == "mlapi-first-admin"
    values = {**secret["stringData"], "password": "a-first-admin-password"}
    env = {}
    for item in job_container["env"]:
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == secret["metadata"]["name"]
            env[item["name"]] = values[ref["key"]]
    assert "FLASK_USERS_CREATE_PASSWORD" in env
    command = [
        re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in job_container["command"]
    ]
    assert command[:3] == ["flask", "--app", "wsgi"]
    server = servers(env=env, create=False)
    created = server.flask(*command[3:])
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "Created admin 'admin'."
    again = server.flask(*command[3:])
    assert again.returncode == 1 and "already exists" in again.stderr
    server.start()
    assert server.token("admin", "a-first-admin-password")["Authorization"].startswith("Bearer ")


# --- Prometheus recording rules --------------------------------------------------------

RECORDING_RULES = PROMETHEUS / "rules.yml"


def recording_rules():
    return [rule for group in load_yaml(RECORDING_RULES)["groups"] for rule in group["rules"]]


def test_prometheus_loads_the_recording_rules():
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    assert RECORDING_RULES.name in config["rule_files"]


def test_promtool_accepts_the_recording_rules():
    out = run(promtool(), "check", "rules", RECORDING_RULES.name, cwd=PROMETHEUS)
    assert f"SUCCESS: {len(recording_rules())} rules found" in out


def test_recording_rules_pass_their_unit_tests():
    out = run(promtool(), "test", "rules", "rules_test.yml", cwd=PROMETHEUS)
    assert "SUCCESS" in out


def test_recording_rules_are_named_level_metric_operations():
    """level is the labels the rule keeps, in order; every rule keeps job."""
    for rule in recording_rules():
        level, metric, operations = rule["record"].split(":")
        assert re.fullmatch(r"[a-z0-9_]+", metric) and operations, rule["record"]
        groupings = re.findall(r"\bby\s*\(([^)]*)\)", rule["expr"])
        assert groupings, rule["record"]
        for grouping in groupings:
            labels = re.split(r",\s*", grouping.strip())
            if not metric.endswith("_bucket"):  # quantiles aggregate the buckets away
                labels = [label for label in labels if label != "le"]
            assert labels[0] == "job" and "_".join(labels) == level, rule["record"]


def test_recording_rules_read_only_exported_metrics():
    for rule in recording_rules():
        names = metric_names(rule["expr"])
        assert names and all(is_exported(name) for name in names), rule["record"]


def test_every_metric_on_the_dashboard_has_a_recording_rule():
    def base(name):
        stem, _, suffix = name.rpartition("_")
        return stem if suffix in {"bucket", "sum", "count"} and stem in METRICS else name

    recorded = {base(name) for rule in recording_rules() for name in metric_names(rule["expr"])}
    shown = {base(name) for expr in dashboard_exprs() for name in metric_names(expr)}
    assert shown - SCRAPE_SERIES <= recorded


def test_every_recording_rule_has_a_unit_test():
    tested = set()
    for test in load_yaml(PROMETHEUS / "rules_test.yml")["tests"]:
        for case in test["promql_expr_test"]:
            tested |= set(re.findall(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", case["expr"]))
    assert {rule["record"] for rule in recording_rules()} == tested
