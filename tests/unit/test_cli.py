"""The admin CLI: ``flask users ...`` (create/list/disable/enable/delete/set-password),
``flask db ...`` and ``flask models list`` / ``flask models check PATH``."""

import json
import math

import numpy as np
import pytest

from tests.helpers import LINEAR, PASSWORD

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


# --- flask models ---------------------------------------------------------------------


@pytest.fixture
def model_dir(tmp_path):
    directory = tmp_path / "models"
    directory.mkdir()
    (directory / "price.json").write_text(json.dumps(LINEAR))
    (directory / "price-10.json").write_text(json.dumps({**LINEAR, "version": "10"}))
    return directory


@pytest.fixture
def models_runner(make_app, model_dir):
    """A CLI models_runner of an app that loaded the models of ``model_dir``."""
    return make_app(MODEL_DIR=str(model_dir)).test_cli_runner()


def test_list_shows_every_model_with_version_inputs_and_readiness(models_runner):
    """One line per model version, sorted by name then version, under a header."""
    result = models_runner.invoke(args=["models", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "READY", "INPUTS"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["average", "1.0", "yes"],
        ["price", "1", "yes"],
        ["price", "10", "yes"],
        ["weighted_average", "2.0", "yes"],
    ]
    assert lines[2].endswith("features FP64 [-1, 3] (rooms, age, area)")
    assert lines[1].endswith("features FP64 [-1, -1]")


def test_check_a_json_model_prints_its_prediction_on_zeros(models_runner, tmp_path):
    """A good linear file loads; on zeros it predicts its bias."""
    path = tmp_path / "candidate.json"
    path.write_text(json.dumps({**LINEAR, "name": "candidate", "bias": -2.25}))
    result = models_runner.invoke(args=["models", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}: linear model candidate:1" in result.output
    assert "input  features FP64 [-1, 3] (rooms, age, area)" in result.output
    assert "prediction on zeros: -2.25" in result.output


def test_check_an_npz_logistic_model(models_runner, tmp_path):
    """A good .npz logistic file predicts sigmoid(bias) on zeros."""
    path = tmp_path / "churn.npz"
    np.savez(
        path,
        name=np.array("churn"),
        version=np.array("3"),
        kind=np.array("logistic"),
        weights=np.array([0.5, -1.25]),
        bias=np.array(0.1),
    )
    result = models_runner.invoke(args=["models", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert f"prediction on zeros: {1 / (1 + math.exp(-0.1))!r}" in result.output


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("bad.json", '{"name": "m"}', "invalid model file: version: Field required"),
        ("bad.json", "{", "cannot read model file"),
        ("model.pkl", "not even read", "pickle-based files are refused"),
        ("model.onnx", "not a supported format", "not a readable ONNX model"),
        ("model.txt", "a LightGBM booster", "refused: serve LightGBM boosters as ONNX"),
        (
            "wide.json",
            json.dumps({**LINEAR, "weights": [1.0] * 10_001, "feature_names": None}),
            "more than MLAPI_MAX_FEATURES",
        ),
    ],
)
def test_check_a_bad_file_exits_non_zero_naming_it(
    models_runner, tmp_path, filename, content, message
):
    """A bad file is exit status 1 and an error that names the file and the problem."""
    path = tmp_path / filename
    path.write_text(content)
    result = models_runner.invoke(args=["models", "check", str(path)])
    assert result.exit_code == 1
    assert f"Error: {path}: " in result.output
    assert message in result.output


def test_check_a_missing_file_is_a_usage_error(models_runner, tmp_path):
    """A path that does not exist is refused by the command line itself."""
    result = models_runner.invoke(args=["models", "check", str(tmp_path / "nope.json")])
    assert result.exit_code == 2
    assert "does not exist" in result.output
