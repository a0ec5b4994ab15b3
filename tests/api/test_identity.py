"""Identity hygiene: one name per person across case and Unicode width, in the API, the CLI
and the database; checked names, e-mail addresses and passwords; role changes."""

import json

import jwt as pyjwt
import pytest
import sqlalchemy as sa

from mlapi import sql
from mlapi.extensions import db
from tests.helpers import BEFORE_KEY, PASSWORD, assert_problem, database_before_key

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)


def users_cmd(runner, *args, input=None):
    return runner.invoke(args=["users", *args], input=input)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("testuser", "TestUser"),
        ("testuser", "TESTUSER"),
        ("testuser", "ｔｅｓｔｕｓｅｒ"),
        ("admin", "ＡＤＭＩＮ"),
        ("Straße", "STRASSE"),
    ],
)
def test_look_alike_names_clash_in_the_cli(runner, first, second):
    """A name that differs from an existing one only in case or width is refused, naming it."""
    assert users_cmd(runner, "create", first, "--password", PASSWORD).exit_code == 0
    result = users_cmd(runner, "create", second, "--password", PASSWORD)
    assert result.exit_code == 1
    assert f"already exists as {first!r}" in result.output
    assert users_cmd(runner, "list").output.count("\n") == 2  # header and one user


def test_database_refuses_two_rows_with_one_key(app, make_user):
    """The unique index holds even for writes that bypass mlapi's checks."""

    make_user("alice")
    with app.app_context(), pytest.raises(sql.IntegrityError), db.transaction() as conn:
        conn.execute(
            "INSERT INTO users (username, username_key, password_hash, role, disabled,"
            " created_at) VALUES ('ALICE', 'alice', 'x', 'user', false, CURRENT_TIMESTAMP)"
        )
    engine = sa.create_engine(app.config["DATABASE_URI"])
    try:
        index = {i["name"]: i for i in sa.inspect(engine).get_indexes("users")}[
            "ix_users_username_key"
        ]
    finally:
        engine.dispose()
    assert index["column_names"] == ["username_key"] and index["unique"]


def test_original_spelling_is_kept_and_login_normalises(client, make_user):
    """TestUser logs in as testuser or fullwidth ＴＥＳＴＵＳＥＲ; sub and /users/me say TestUser."""
    make_user("TestUser", email="t@example.com")
    for typed in ("TestUser", "testuser", "TESTUSER", "ＴＥＳＴＵＳＥＲ"):
        response = client.post("/token", data={"username": typed, "password": PASSWORD})
        assert response.status_code == 200, typed
        token = response.get_json()["access_token"]
        assert pyjwt.decode(token, options={"verify_signature": False})["sub"] == "TestUser"
        me = client.get("/users/me", headers=bearer(token))
        assert me.get_json()["username"] == "TestUser"


def test_failed_logins_share_one_budget_across_spellings(make_app):
    """The per-username login limit counts Alice, ALICE and ａｌｉｃｅ as one account."""
    app = make_app(LOGIN_RATE_LIMIT="3/minute")
    client = app.test_client()
    for n, name in enumerate(("alice", "ALICE", "ａｌｉｃｅ")):
        response = client.post(
            "/token",
            data={"username": name, "password": "wrong-guess"},
            environ_base={"REMOTE_ADDR": f"10.0.0.{n}"},
        )
        assert response.status_code == 401
    blocked = client.post(
        "/token",
        data={"username": "Alice", "password": "wrong-guess"},
        environ_base={"REMOTE_ADDR": "10.9.9.9"},
    )
    assert_problem(blocked, 429)


def test_principal_is_read_by_one_indexed_select(app, client, auth):
    """Each authenticated request reads its user with one SELECT on the name key's index."""
    statements = []

    def record(statement, _parameters):
        statements.append(statement)

    with app.app_context():
        database = db._get_current_object()
    database.listen(record)
    try:
        assert client.get("/users/me", headers=auth).status_code == 200
    finally:
        database.unlisten(record)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1, statements
    assert "users.username_key =" in selects[0]
    with app.app_context(), db.connect() as conn:
        if db.dialect == "sqlite":
            plan = conn.all("EXPLAIN QUERY PLAN SELECT id FROM users WHERE username_key = 'alice'")
            assert "ix_users_username_key" in str(plan)
        else:
            conn.execute("SET enable_seqscan = off")
            plan = conn.all("EXPLAIN SELECT id FROM users WHERE username_key = 'alice'")
            conn.execute("RESET enable_seqscan")
            assert "ix_users_username_key" in str(plan)


@pytest.mark.parametrize(
    "name", ["weird name/../x", "a/b", "x" * 65, "tab\tname", "emoji\U0001f600"]
)
def test_cli_refuses_names_outside_the_character_set(runner, name):
    result = users_cmd(runner, "create", name, "--password", PASSWORD)
    assert result.exit_code == 1
    assert "letters, digits and the characters . _ - @" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("email", "reason"),
    [
        ("not-an-email", "must have an @-sign"),
        ("x" * 250 + "@example.com", "too long"),
        ("a@b", "period"),
    ],
)
def test_cli_checks_email_before_the_database(runner, email, reason):
    """Bad or over-long addresses are one clear sentence on SQLite and PostgreSQL alike."""
    result = users_cmd(runner, "create", "alice", "--password", PASSWORD, "--email", email)
    assert result.exit_code == 1
    assert "Invalid e-mail address" in result.output and reason in result.output
    assert "Traceback" not in result.output
    assert "alice" not in users_cmd(runner, "list").output


def test_email_is_stored_normalised(runner):
    result = users_cmd(
        runner, "create", "alice", "--password", PASSWORD, "--email", "A@EXAMPLE.COM"
    )
    assert result.exit_code == 0, result.output
    listed = json.loads(users_cmd(runner, "list", "--json").output)
    assert listed[0]["email"] == "A@example.com"


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("password", "too common"),
        (" " * 8, "only spaces"),
        ("short", "at least 8 characters"),
        ("alice.smith", "user name"),
    ],
)
def test_cli_refuses_weak_passwords_on_create_and_change(runner, password, reason):
    result = users_cmd(runner, "create", "alice.smith", "--password", password)
    assert result.exit_code == 1 and reason in result.output
    assert users_cmd(runner, "create", "alice.smith", "--password", PASSWORD).exit_code == 0
    changed = users_cmd(runner, "set-password", "alice.smith", "--password", password)
    assert changed.exit_code == 1 and reason in changed.output


def test_minimum_password_length_setting_applies_to_the_cli(make_app):
    runner = make_app(PASSWORD_MIN_LENGTH=15).test_cli_runner()
    result = users_cmd(runner, "create", "alice", "--password", "fourteen-chars")
    assert result.exit_code == 1 and "at least 15 characters" in result.output


def test_cli_commands_find_users_by_key(runner, client):
    """disable, enable, set-role and set-password accept any spelling of the name."""
    users_cmd(runner, "create", "Alice", "--password", PASSWORD)
    assert users_cmd(runner, "disable", "ALICE").exit_code == 0
    assert (
        client.post("/token", data={"username": "alice", "password": PASSWORD}).status_code == 401
    )
    assert users_cmd(runner, "enable", "ａｌｉｃｅ").exit_code == 0
    assert (
        client.post("/token", data={"username": "alice", "password": PASSWORD}).status_code == 200
    )


def test_set_role_promotes_and_ends_sessions(runner, client):
    """set-role changes what the user may do; tokens issued with the old role stop working."""
    users_cmd(runner, "create", "alice", "--password", PASSWORD)
    old = client.post("/token", data={"username": "alice", "password": PASSWORD}).get_json()
    assert_problem(
        client.delete("/cache/invalidate", json=[1], headers=bearer(old["access_token"])), 403
    )
    result = users_cmd(runner, "set-role", "Alice", "admin")
    assert result.exit_code == 0, result.output
    assert "'alice' now has the admin role" in result.output
    assert_problem(client.get("/users/me", headers=bearer(old["access_token"])), 401)
    assert_problem(client.post("/token/refresh", headers=bearer(old["refresh_token"])), 401)
    new = client.post("/token", data={"username": "alice", "password": PASSWORD}).get_json()
    claims = pyjwt.decode(new["access_token"], options={"verify_signature": False})
    assert claims["role"] == "admin"
    headers = bearer(new["access_token"])
    assert client.delete("/cache/invalidate", json=[1], headers=headers).status_code == 200
    assert json.loads(users_cmd(runner, "list", "--json").output)[0]["role"] == "admin"
    users_cmd(runner, "set-role", "alice", "user")
    assert_problem(client.delete("/cache/invalidate", json=[1], headers=headers), 401)


def test_set_role_refuses_unknown_roles_and_users(runner):
    users_cmd(runner, "create", "alice", "--password", PASSWORD)
    bad_role = users_cmd(runner, "set-role", "alice", "superuser")
    assert (
        bad_role.exit_code == 2 and "'superuser' is not one of 'user', 'admin'" in bad_role.output
    )
    ghost = users_cmd(runner, "set-role", "ghost", "admin")
    assert ghost.exit_code == 1 and "No user named 'ghost'" in ghost.output


def test_list_json_is_machine_readable(runner):
    assert json.loads(users_cmd(runner, "list", "--json").output) == []
    users_cmd(runner, "create", "Bob", "--password", PASSWORD, "--admin")
    users_cmd(runner, "create", "alice", "--password", PASSWORD, "--email", "a@example.com")
    users_cmd(runner, "disable", "alice")
    listed = json.loads(users_cmd(runner, "list", "--json").output)
    assert [{k: v for k, v in u.items() if k != "created_at"} for u in listed] == [
        {"username": "alice", "email": "a@example.com", "role": "user", "disabled": True},
        {"username": "Bob", "email": None, "role": "admin", "disabled": False},
    ]
    assert all(u["created_at"][:4].isdigit() for u in listed)


# --- the migration that adds the key --------------------------------------------------


@pytest.fixture
def old_database(make_app):
    """A database at the revision before the key, holding users created under the old rules."""
    return lambda *names: database_before_key(make_app(), names)


def columns_and_revision(url):
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            rows = conn.execute(sa.text("SELECT * FROM users ORDER BY id")).mappings().all()
        return {c["name"] for c in sa.inspect(engine).get_columns("users")}, revision, rows
    finally:
        engine.dispose()


def test_migration_reports_existing_clashes_and_changes_nothing(old_database, make_app, caplog):
    """Upgrading a database with look-alike users stops, names every group and the fix."""
    url = old_database("alice", "ALICE", "ａｌｉｃｅ", "bob", "Admin", "ＡＤＭＩＮ", "Carol")
    with pytest.raises(SystemExit) as stopped:
        make_app(DATABASE_URL=url)
    assert stopped.value.code == 1
    report = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert "Cannot make user names unique ignoring case and Unicode width" in report
    assert "same name: 'alice' (id 1), 'ALICE' (id 2), 'ａｌｉｃｅ' (id 3)" in report
    assert "same name: 'Admin' (id 5), 'ＡＤＭＩＮ' (id 6)" in report
    assert "bob" not in report and "Carol" not in report
    assert "UPDATE users SET username = 'new-name' WHERE id = 3" in report
    assert "Nothing was changed" in report
    columns, revision, rows = columns_and_revision(url)
    assert "username_key" not in columns
    assert revision == BEFORE_KEY
    assert len(rows) == 7


def test_migration_fills_the_key_once_clashes_are_resolved(old_database, make_app):
    """After the operator renames or deletes the look-alikes, the upgrade keys every user."""
    url = old_database("alice", "ALICE", "Straße", "ＢＯＢ")
    with pytest.raises(SystemExit):
        make_app(DATABASE_URL=url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE users SET username = 'alice-2' WHERE id = 2"))
    engine.dispose()
    app = make_app(DATABASE_URL=url)
    columns, revision, rows = columns_and_revision(url)
    assert "username_key" in columns
    assert [(r["username"], r["username_key"]) for r in rows] == [
        ("alice", "alice"),
        ("alice-2", "alice-2"),
        ("Straße", "strasse"),
        ("ＢＯＢ", "bob"),
    ]
    runner = app.test_cli_runner()
    assert users_cmd(runner, "create", "STRASSE", "--password", PASSWORD).exit_code == 1
    assert users_cmd(runner, "set-password", "bob", "--password", PASSWORD).exit_code == 0
    response = app.test_client().post("/token", data={"username": "Bob", "password": PASSWORD})
    assert response.status_code == 200
