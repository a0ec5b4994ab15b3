"""Files mlapi creates hold password hashes and secrets: readable by their owner only."""

import os
import stat

import pytest

from tests.helpers import PASSWORD


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask():
    """A umask that masks nothing, so only mlapi's own modes protect the files."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_instance_folder_database_and_secret_are_private(make_app, tmp_path, open_umask):
    """The default SQLite file (0600), the instance folder (0700) and its files, whatever the umask."""
    app = make_app(DATABASE_URL=None, SECRET_KEY=None)
    instance = tmp_path / "instance"
    assert app.config["DATABASE_URI"] == f"sqlite:///{instance / 'mlapi.db'}"
    app.test_cli_runner().invoke(args=["users", "create", "alice", "--password", PASSWORD])
    assert mode(instance) == 0o700
    assert {p.name: mode(p) for p in instance.iterdir()} == {
        "mlapi.db": 0o600,
        "mlapi.db.schema-lock": 0o600,
        "secret_key": 0o600,
    }


def test_sqlite_file_elsewhere_is_private_and_existing_files_are_left_alone(
    make_app, tmp_path, caplog
):
    """A DATABASE_URL file is created 0600; an existing file keeps its mode, with a warning
    naming the fix when others can read it (instance/mlapi.db of earlier releases is 0644)."""
    make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'new.db'}")
    assert mode(tmp_path / "new.db") == 0o600
    assert "readable by other users" not in caplog.text
    existing = tmp_path / "existing.db"
    existing.touch()
    existing.chmod(0o644)
    make_app(DATABASE_URL=f"sqlite:///{existing}")
    assert mode(existing) == 0o644
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"restrict it with: chmod 600 {existing}" in "\n".join(warnings)
