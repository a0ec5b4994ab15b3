"""The admin CLI: flask users create/list/disable/enable/delete/set-password."""

import pytest

from tests.conftest import PASSWORD

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)


def users_cmd(runner, *args, input=None):
    return runner.invoke(args=["users", *args], input=input)


def test_create_with_password_option_then_login(runner, client):
    """users create NAME --password P makes a user who can log in."""
    result = users_cmd(runner, "create", "alice", "--password", PASSWORD, "--email", "a@x.io")
    assert result.exit_code == 0, result.output
    assert "Created user 'alice'" in result.output
    response = client.post("/token", data={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200


def test_create_prompts_hidden_and_confirmed(runner, client):
    """Without --password the CLI prompts twice and the typed password is never echoed."""
    result = users_cmd(runner, "create", "bob", input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert "Repeat for confirmation" in result.output
    assert client.post("/token", data={"username": "bob", "password": PASSWORD}).status_code == 200


def test_mismatched_confirmation_asks_again(runner):
    """A confirmation that differs is refused and asked for again."""
    result = users_cmd(
        runner, "create", "bob", input=f"{PASSWORD}\nother-password\n{PASSWORD}\n{PASSWORD}\n"
    )
    assert result.exit_code == 0, result.output
    assert "do not match" in result.output


def test_create_admin(runner, client):
    """--admin creates a user who may invalidate the cache."""
    users_cmd(runner, "create", "root", "--admin", "--password", PASSWORD)
    token = client.post("/token", data={"username": "root", "password": PASSWORD}).get_json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    assert client.delete("/cache/invalidate", json=[1], headers=headers).status_code == 200


def test_duplicate_name_is_a_clear_error(runner):
    """Creating an existing user fails with a message and a non-zero exit."""
    users_cmd(runner, "create", "alice", "--password", PASSWORD)
    result = users_cmd(runner, "create", "alice", "--password", PASSWORD)
    assert result.exit_code == 1
    assert "already exists" in result.output


def test_short_password_is_refused(runner):
    """Passwords under 8 characters are refused."""
    result = users_cmd(runner, "create", "alice", "--password", "short")
    assert result.exit_code == 1
    assert "at least 8 characters" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ("disable", "ghost"),
        ("enable", "ghost"),
        ("delete", "ghost", "--yes"),
        ("set-password", "ghost"),
    ],
)
def test_unknown_user_is_a_clear_error(runner, args):
    """Every command on a missing user exits non-zero naming the user."""
    result = users_cmd(runner, *args, input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 1
    assert "No user named 'ghost'" in result.output


def test_list_shows_role_and_state(runner):
    """users list prints each user's name, role, state and email."""
    users_cmd(runner, "create", "alice", "--password", PASSWORD, "--email", "a@x.io")
    users_cmd(runner, "create", "root", "--admin", "--password", PASSWORD)
    users_cmd(runner, "disable", "alice")
    lines = users_cmd(runner, "list").output.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "STATE", "EMAIL"]
    assert lines[1].split() == ["alice", "user", "disabled", "a@x.io"]
    assert lines[2].split() == ["root", "admin", "enabled", "-"]


def test_list_on_empty_database_says_how_to_start(runner):
    """An empty user list explains how to create the first user."""
    assert "users create" in users_cmd(runner, "list").output


def test_disable_ends_sessions_and_enable_restores_login(runner, client):
    """Disabling refuses the user's token at once; after enabling, a new login works and the
    old token stays refused."""
    users_cmd(runner, "create", "alice", "--password", PASSWORD)
    token = client.post("/token", data={"username": "alice", "password": PASSWORD}).get_json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    assert users_cmd(runner, "disable", "alice").exit_code == 0
    assert client.get("/users/me", headers=headers).status_code == 401
    assert users_cmd(runner, "enable", "alice").exit_code == 0
    assert client.get("/users/me", headers=headers).status_code == 401
    fresh = client.post("/token", data={"username": "alice", "password": PASSWORD}).get_json()
    assert (
        client.get(
            "/users/me", headers={"Authorization": f"Bearer {fresh['access_token']}"}
        ).status_code
        == 200
    )


def test_delete_asks_for_confirmation(runner):
    """delete without --yes asks; answering no keeps the user."""
    users_cmd(runner, "create", "alice", "--password", PASSWORD)
    result = users_cmd(runner, "delete", "alice", input="n\n")
    assert result.exit_code == 1
    assert "alice" in users_cmd(runner, "list").output
    assert users_cmd(runner, "delete", "alice", "--yes").exit_code == 0
    assert "alice" not in users_cmd(runner, "list").output


def test_set_password_changes_the_login(runner, client):
    """set-password replaces the password: the old one fails, the new one works."""
    users_cmd(runner, "create", "alice", "--password", PASSWORD)
    before = client.post("/token", data={"username": "alice", "password": PASSWORD}).get_json()
    result = users_cmd(runner, "set-password", "alice", input="new-password-1\nnew-password-1\n")
    assert result.exit_code == 0, result.output
    old_token = {"Authorization": f"Bearer {before['access_token']}"}
    assert client.get("/users/me", headers=old_token).status_code == 401
    assert (
        client.post("/token", data={"username": "alice", "password": PASSWORD}).status_code == 401
    )
    ok = client.post("/token", data={"username": "alice", "password": "new-password-1"})
    assert ok.status_code == 200


def test_db_upgrade_command_leaves_the_schema_at_head(app, runner):
    """flask db upgrade runs Flask-Migrate (loaded on demand) and the database is at head."""
    from mlapi.database import current_revision, head_revision

    result = runner.invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        assert current_revision() == head_revision()


def test_database_at_an_older_revision_is_upgraded_at_start(make_app):
    """A database left at an earlier migration is brought to the newest one when the app starts."""
    from flask_migrate import downgrade

    from mlapi.database import MIGRATIONS, current_revision, head_revision, init_migrations

    old = make_app()
    with old.app_context():
        init_migrations(old)
        downgrade(directory=MIGRATIONS, revision="-1")
        assert current_revision() != head_revision()
    new = make_app()
    with new.app_context():
        assert current_revision() == head_revision()
