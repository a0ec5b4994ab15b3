"""Identity and files as an operator meets them: ``flask --app wsgi`` processes on a
database with look-alike users from before the name key, and the files the CLI leaves."""

import json
import os
import stat

import pytest

from tests.helpers import PASSWORD, database_before_key

pytestmark = pytest.mark.slow


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_migration_report_reaches_the_cli_process(make_app, servers):
    """flask --app wsgi on a clashing database exits 1 with the report, not a traceback."""
    url = database_before_key(make_app(), ["dave", "DAVE"])
    server = servers(create=False, env={"MLAPI_DATABASE_URL": url})
    result = server.flask("users", "list")
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "same name: 'dave' (id 1), 'DAVE' (id 2)" in output
    assert "Traceback" not in output


def test_files_made_by_the_cli_process_are_private(servers, tmp_path):
    """flask --app wsgi users create, as an operator runs it, leaves 0700/0600 behind."""
    server = servers(create=False)
    del server.env["MLAPI_SECRET_KEY"]  # let the CLI generate one into the instance folder
    result = server.flask("users", "create", "alice", "--password", PASSWORD)
    assert result.returncode == 0, result.stderr
    instance = tmp_path / "instance"
    assert mode(instance) == 0o700
    assert mode(instance / "mlapi.db") == 0o600
    assert mode(instance / "secret_key") == 0o600


def test_operator_session_through_flask_processes(servers):
    """create, a look-alike refused, set-role and list --json as separate flask processes."""
    server = servers(create=False)
    assert server.flask("users", "create", "admin", "--password", PASSWORD).returncode == 0
    clash = server.flask("users", "create", "ＡＤＭＩＮ", "--password", PASSWORD)
    assert clash.returncode == 1
    assert "already exists as 'admin'" in clash.stderr
    weak = server.flask("users", "create", "bob", "--password", "password")
    assert weak.returncode == 1 and "too common" in weak.stderr
    promoted = server.flask("users", "set-role", "ADMIN", "admin")
    assert promoted.returncode == 0, promoted.stderr
    listed = server.flask("users", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(u["username"], u["role"]) for u in json.loads(listed.stdout)] == [("admin", "admin")]
    plain = server.flask("users", "list").stdout.splitlines()
    assert plain[0].split() == ["NAME", "ROLE", "STATE", "EMAIL"]
