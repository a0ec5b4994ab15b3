"""Settings checked at start, end to end: real gunicorn and ``flask --app wsgi`` processes.

A bad setting stops the process with a non-zero exit and exactly one JSON log line naming
the setting, never a traceback; a database that comes up late is waited for.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.helpers import require_service
from tests.system.servers import ROOT, SECRET, Gunicorn, free_port, wait_until

PG_BIN = Path("/usr/lib/postgresql/15/bin")


GUNICORN = ["-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
# As scripts/run and the image start mlapi: gunicorn with WEB_CONCURRENCY checked first.
SERVE = ["serve.py"]


def run_gunicorn(tmp_path, env, command=GUNICORN):
    """Start ``gunicorn -c gunicorn.conf.py wsgi:app`` (or ``python serve.py``) with ``env``;
    it must exit by itself."""
    server = Gunicorn(tmp_path, env=env)
    return subprocess.run(
        [sys.executable, *command],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_flask(tmp_path, env):
    return Gunicorn(tmp_path, env=env).flask("users", "list")


def json_lines(result):
    """Every line of stdout and stderr, each of which must be a JSON object."""
    lines = (result.stdout + result.stderr).splitlines()
    parsed = [json.loads(line) for line in lines if line.strip()]
    assert all(isinstance(item, dict) for item in parsed)
    return parsed


def assert_refused(result, setting, words=()):
    """Non-zero exit, no traceback, exactly one JSON line naming ``setting`` and a fix."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output
    naming = [line for line in json_lines(result) if line.get("setting") == setting]
    assert len(naming) == 1, output
    (line,) = naming
    assert line["level"] == "CRITICAL"
    assert setting in line["message"] or setting in line["fix"]
    assert line["fix"]
    for word in words:
        assert word in line["message"] + line["fix"]
    return line


def secret_file(tmp_path, text=SECRET):
    path = tmp_path / "secret"
    path.write_text(text + "\n")
    return str(path)


BAD_SETTINGS = [
    ({"MLAPI_MAX_FEATURES": "abc"}, "MLAPI_MAX_FEATURES", ["valid integer"]),
    ({"MLAPI_MAX_BATCH": "0"}, "MLAPI_MAX_BATCH", ["greater than or equal to 1"]),
    ({"MLAPI_ENV": "prod"}, "MLAPI_ENV", ["'production'"]),
    ({"MLAPI_METRICS_PER_USER": "maybe"}, "MLAPI_METRICS_PER_USER", ["boolean"]),
    ({"MLAPI_PUBLIC_RATE_LIMIT": "lots"}, "MLAPI_PUBLIC_RATE_LIMIT", ["10/minute"]),
    ({"MLAPI_REDIS_URL": "localhost:6379"}, "MLAPI_REDIS_URL", ["redis://"]),
    (
        {"MLAPI_ENV": "production", "MLAPI_REDIS_ULR": "redis://127.0.0.1:6379/0"},
        "MLAPI_REDIS_ULR",
        ["did you mean MLAPI_REDIS_URL"],
    ),
    (
        {"MLAPI_SECRET_KEY": "", "MLAPI_SECRET_KEY_FILE": "/no/such/secret"},
        "MLAPI_SECRET_KEY_FILE",
        ["/no/such/secret"],
    ),
    ({"MLAPI_ENV": "production", "MLAPI_SECRET_KEY": "short"}, "MLAPI_SECRET_KEY", []),
    (
        {"MLAPI_CORS_ORIGINS": "https://app.example.com,ftp://files.example.com"},
        "MLAPI_CORS_ORIGINS",
        ["'ftp://files.example.com' is not an origin", "scheme://host[:port]"],
    ),
    ({"MLAPI_CORS_ORIGINS": '["app.example.com"]'}, "MLAPI_CORS_ORIGINS", ["not an origin"]),
    # OpenTelemetry's own variables, checked whether tracing is on or off.
    ({"OTEL_TRACES_SAMPLER_ARG": "abc"}, "OTEL_TRACES_SAMPLER_ARG", ["ratio from 0 to 1"]),
    (
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
        "OTEL_TRACES_SAMPLER_ARG",
        ["ratio from 0 to 1"],
    ),
    (
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "ratio"},
        "OTEL_TRACES_SAMPLER",
        ["parentbased_traceidratio"],
    ),
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER", ["otlp, console"]),
    (
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        ["http/protobuf"],
    ),
]


@pytest.mark.parametrize(("env", "setting", "words"), BAD_SETTINGS, ids=lambda v: str(v))
def test_gunicorn_refuses_a_bad_setting_in_one_line(tmp_path, env, setting, words):
    """The master checks the settings before any worker starts: nothing listens, nothing loops."""
    result = run_gunicorn(tmp_path, env)
    line = assert_refused(result, setting, words)
    assert result.returncode == 4
    assert len(json_lines(result)) == 1, line


@pytest.mark.parametrize(("env", "setting", "words"), BAD_SETTINGS, ids=lambda v: str(v))
def test_flask_cli_refuses_a_bad_setting_in_one_line(tmp_path, env, setting, words):
    result = run_flask(tmp_path, env)
    assert_refused(result, setting, words)
    assert result.returncode == 1


def test_both_a_setting_and_its_file_are_refused(tmp_path):
    env = {"MLAPI_SECRET_KEY_FILE": secret_file(tmp_path)}  # MLAPI_SECRET_KEY is set as well
    line = assert_refused(run_gunicorn(tmp_path, env), "MLAPI_SECRET_KEY_FILE")
    assert "both MLAPI_SECRET_KEY and MLAPI_SECRET_KEY_FILE" in line["message"]


def test_a_secret_never_appears_in_the_refusal(tmp_path):
    env = {"MLAPI_ENV": "production", "MLAPI_SECRET_KEY": "hunter2-short"}
    result = run_gunicorn(tmp_path, env)
    assert_refused(result, "MLAPI_SECRET_KEY")
    assert "hunter2" not in result.stdout + result.stderr


def test_an_unusable_instance_folder_stops_gunicorn_naming_it(tmp_path):
    """Found by a worker (it creates the folder): exit code 4 makes the master stop at once."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {"MLAPI_INSTANCE_PATH": str(blocker / "instance")}
    started = time.monotonic()
    result = run_gunicorn(tmp_path, env)
    assert time.monotonic() - started < 30
    line = assert_refused(result, "MLAPI_INSTANCE_PATH", [str(blocker / "instance")])
    assert result.returncode == 4
    assert "Not a directory" in line["message"]
    assert (result.stdout + result.stderr).count("Booting worker") == 1  # no restart loop


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: no EACCES to provoke")
def test_a_folder_without_permission_is_named_with_its_setting(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    line = assert_refused(
        run_flask(tmp_path, {"MLAPI_INSTANCE_PATH": str(folder)}), "MLAPI_INSTANCE_PATH"
    )
    assert str(folder) in line["message"]


def test_development_warns_about_an_unknown_name_and_starts(servers):
    server = servers(env={"MLAPI_REDIS_ULR": "redis://127.0.0.1:6379/0"})
    assert requests.get(server.url("/health/live"), timeout=10).status_code == 200
    warnings = [
        line
        for line in server.log_lines()
        if line.get("logger") == "mlapi.config" and line.get("level") == "WARNING"
    ]
    assert warnings
    assert "MLAPI_REDIS_ULR" in warnings[0]["message"]
    assert "did you mean MLAPI_REDIS_URL?" in warnings[0]["message"]


def test_names_read_elsewhere_are_not_warned_about(servers):
    server = servers(env={"MLAPI_VENV": ".venv", "MLAPI_BUILD_COMMIT": "abc123"})
    assert not [line for line in server.log_lines() if line.get("logger") == "mlapi.config"]


def test_secret_and_redis_url_from_files_run_several_workers(servers, tmp_path):
    """The Kubernetes manifests mount secrets as files; the worker count follows the
    resolved Redis URL."""
    redis_url = os.environ.get("MLAPI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    require_service("Redis", redis_url)
    url_file = tmp_path / "redis-url"
    url_file.write_text(redis_url + "\n")
    env = {
        "MLAPI_SECRET_KEY": "",
        "MLAPI_SECRET_KEY_FILE": secret_file(tmp_path),
        "MLAPI_REDIS_URL_FILE": str(url_file),
        "MLAPI_REDIS_KEY_PREFIX": f"mlapi-settings-{os.getpid()}:",
        "WEB_CONCURRENCY": "2",
    }
    server = servers(env=env)
    wait_until(lambda: len(server.worker_pids()) == 2, timeout=30, what="two workers")
    ready = requests.get(server.url("/health/ready"), timeout=10)
    assert ready.status_code == 200, ready.text
    assert "redis" in ready.json()["checks"]


# --- a database that comes up late -----------------------------------------------------


class LatePostgres:
    """A private PostgreSQL, initialised now and started when the test says."""

    def __init__(self):
        if not (PG_BIN / "initdb").exists():
            if os.environ.get("CI") == "true":
                pytest.fail("PostgreSQL 15 binaries are missing; under CI=true this is a failure")
            pytest.skip("PostgreSQL 15 binaries are not installed")
        self.port = free_port()
        # initdb and postgres refuse to run as root: run them as the postgres user.
        self.data = Path(tempfile.mkdtemp(prefix="mlapi-settings-pg-"))
        self.as_owner = []
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres", "postgres")
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        self.db = str(self.data / "db")
        subprocess.run(
            [*self.as_owner, str(PG_BIN / "initdb"), "-D", self.db, "-U", "postgres"]
            + ["--auth=trust", "--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self):
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data}"
        subprocess.run(
            [*self.as_owner, str(PG_BIN / "pg_ctl"), "-D", self.db, "-o", options, "-w"]
            + ["-l", str(self.data / "log"), "start"],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def stop(self):
        subprocess.run(
            [*self.as_owner, str(PG_BIN / "pg_ctl"), "-D", self.db, "stop", "-m", "immediate"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.data, ignore_errors=True)


@pytest.fixture
def late_postgres():
    server = LatePostgres()
    yield server
    server.stop()


def test_gunicorn_waits_for_a_database_that_starts_late(servers, late_postgres):
    server = servers(
        env={"MLAPI_DATABASE_URL": late_postgres.url, "MLAPI_DB_WAIT_SECONDS": "60"},
        create=False,
    )
    server.log_file = open(server.log_path, "ab")  # noqa: SIM115 (closed by server.stop())
    server.process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=server.env,
        stdout=server.log_file,
        stderr=subprocess.STDOUT,
    )

    def waiting():
        return any(
            "waiting for the database" in line.get("message", "") for line in server.log_lines()
        )

    wait_until(waiting, timeout=30, what="a 'waiting for the database' line")
    assert server.process.poll() is None
    late_postgres.start()
    wait_until(server._live, timeout=60, what="gunicorn serving after the database came up")
    ready = requests.get(server.url("/health/ready"), timeout=10)
    assert ready.status_code == 200, ready.text
    waits = [line for line in server.log_lines() if "waiting for the database" in str(line)]
    assert all("attempt" in line for line in waits)
    assert "Traceback" not in server.log_path.read_text()


def test_a_database_that_never_comes_up_ends_in_one_line(tmp_path):
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres"
    result = run_gunicorn(tmp_path, {"MLAPI_DATABASE_URL": url, "MLAPI_DB_WAIT_SECONDS": "1.5"})
    line = assert_refused(result, "MLAPI_DATABASE_URL", ["MLAPI_DB_WAIT_SECONDS"])
    assert result.returncode == 4
    attempts = [item for item in json_lines(result) if "attempt" in item]
    assert attempts and all(item["level"] == "WARNING" for item in attempts)
    assert "did not accept connections within 1.5 s" in line["message"]


GUNICORN_NUMBERS = [
    ("WEB_CONCURRENCY", "abc"),
    ("WEB_CONCURRENCY", "0"),
    ("GUNICORN_THREADS", "x"),
    ("GUNICORN_TIMEOUT", "soon"),
    ("GUNICORN_KEEPALIVE", "-1"),
]


@pytest.mark.parametrize(("name", "value"), GUNICORN_NUMBERS)
def test_serve_refuses_a_bad_number_of_gunicorn_in_one_line(tmp_path, name, value):
    result = run_gunicorn(tmp_path, {name: value}, SERVE)
    assert_refused(result, name, ["whole number", repr(value)])
    assert result.returncode == 4
    assert len(json_lines(result)) == 1


@pytest.mark.parametrize(
    ("name", "value"), [n for n in GUNICORN_NUMBERS if n[0] != "WEB_CONCURRENCY"]
)
def test_gunicorn_refuses_a_bad_number_of_its_own_in_one_line(tmp_path, name, value):
    result = run_gunicorn(tmp_path, {name: value})
    assert_refused(result, name, ["whole number"])
    assert result.returncode == 4


def test_plain_gunicorn_parses_web_concurrency_before_mlapi_can_check_it(tmp_path):
    """Why serve.py exists: gunicorn (27.0.1) converts WEB_CONCURRENCY with int() while it
    is imported, before gunicorn.conf.py runs, so plain ``gunicorn -c gunicorn.conf.py``
    ends in its traceback. When this test fails, gunicorn checks it later and serve.py's
    detour can go."""
    result = run_gunicorn(tmp_path, {"WEB_CONCURRENCY": "abc"})
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert 'int(os.environ.get("WEB_CONCURRENCY", 1))' in result.stderr
    assert "mlapi.config" not in result.stderr


def test_serve_runs_gunicorn_with_its_options_and_the_worker_count(servers, tmp_path):
    """serve.py hides WEB_CONCURRENCY only while gunicorn is imported: gunicorn.conf.py
    still reads it (two workers, with Redis); options after serve.py reach gunicorn."""
    redis_url = os.environ.get("MLAPI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    require_service("Redis", redis_url)
    server = servers(
        env={
            "MLAPI_REDIS_URL": redis_url,
            "MLAPI_REDIS_KEY_PREFIX": f"mlapi-serve-{os.getpid()}:",
            "WEB_CONCURRENCY": "2",
        },
        create=False,
    )
    server.log_file = open(server.log_path, "ab")  # noqa: SIM115 (closed by server.stop())
    server.process = subprocess.Popen(
        [sys.executable, *SERVE, "--graceful-timeout", "7"],
        cwd=ROOT,
        env=server.env,
        stdout=server.log_file,
        stderr=subprocess.STDOUT,
    )
    wait_until(server._live, timeout=60, what="serve.py's gunicorn")
    wait_until(lambda: len(server.worker_pids()) == 2, timeout=30, what="two workers")
    assert requests.get(server.url("/health/ready"), timeout=10).status_code == 200
    command = psutil.Process(server.process.pid).cmdline()
    assert command[-2:] == ["--graceful-timeout", "7"]


@pytest.mark.parametrize(
    ("name", "value"), [("MLAPI_MAX_FEATURES", "abc"), ("WEB_CONCURRENCY", "many")]
)
def test_scripts_run_refuses_a_bad_setting_in_one_line(tmp_path, name, value):
    """scripts/run execs serve.py: the same single line and exit code reach the caller."""
    env = {**Gunicorn(tmp_path).env, name: value}
    result = subprocess.run(
        [str(ROOT / "scripts" / "run")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 4, output
    assert "Traceback" not in output
    # (On a first run the script's pip may print its own notes before gunicorn starts.)
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert [line["setting"] for line in lines] == [name]
