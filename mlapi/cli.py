"""Admin commands: ``flask --app wsgi users ...`` and ``flask --app wsgi models ...``."""

import json
import os

import click
import numpy as np
from flask import current_app, g
from flask.cli import AppGroup, with_appcontext

from mlapi import users
from mlapi.database import UNAVAILABLE, ensure_schema, unavailable_reason
from mlapi.predictions import registry, reloader
from mlapi.serving.datatypes import NUMPY_DTYPES
from mlapi.serving.errors import ModelLoadError, PredictionError
from mlapi.serving.loader import LoadSettings, build
from mlapi.serving.loading import PICKLE_SUFFIXES, load_file
from mlapi.serving.onnx import load_onnx
from mlapi.serving.reload import ControlUnavailable
from mlapi.serving.repository import REFUSED


class DatabaseCommands(AppGroup):
    """Commands on the user database: a database that is down, locked or too slow is
    reported in one sentence with exit status 1, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UNAVAILABLE as exc:
            raise click.ClickException(
                f"The user database is unavailable ({unavailable_reason(exc)}); "
                "retry when it answers."
            ) from None


@click.group("users", cls=DatabaseCommands)
@with_appcontext
def users_cli():
    """Manage API users."""
    app = current_app._get_current_object()
    if app.extensions.pop("mlapi.schema_pending", False):
        ensure_schema(app)  # it failed when the app was loaded: try again, or report it


def _fail(exc):
    raise click.ClickException(str(exc)) from None


@users_cli.command("create")
@click.argument("username")
@click.option("--email", help="Contact address shown on /users/me.")
@click.option("--admin", is_flag=True, help="Give the user the admin role.")
@click.option(
    "--password",
    help="Password (at least MLAPI_PASSWORD_MIN_LENGTH characters, 8 by default, not a common "
    "one); prompted for, hidden, when omitted.",
)
def create_user(username, email, admin, password):
    """Create a user.

    USERNAME: 1 to 64 letters, digits and . _ - @; names that differ only in case or
    Unicode width (Alice, ALICE, fullwidth ＡＬＩＣＥ) are one name.
    """
    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        user = users.create(username, password, email=email, role="admin" if admin else "user")
    except users.UserError as exc:
        _fail(exc)
    click.echo(f"Created {user.role} {user.username!r}.")


@users_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per user.")
def list_users(as_json):
    """List users: name, role, state and email."""
    rows = users.all_users()
    if as_json:
        click.echo(json.dumps([_user_json(user) for user in rows], ensure_ascii=False, indent=2))
        return
    if not rows:
        click.echo("No users yet. Create one with: flask --app wsgi users create NAME")
        return
    width = max(len("NAME"), *(len(u.username) for u in rows))
    click.echo(f"{'NAME':<{width}}  {'ROLE':<5}  {'STATE':<8}  EMAIL")
    for user in rows:
        state = "disabled" if user.disabled else "enabled"
        click.echo(f"{user.username:<{width}}  {user.role:<5}  {state:<8}  {user.email or '-'}")


def _user_json(user):
    return {
        "username": user.username,
        "email": user.email,
        "role": user.role,
        "disabled": user.disabled,
        "created_at": user.created_at.isoformat(),
    }


@users_cli.command("set-role")
@click.argument("username")
@click.argument("role", type=click.Choice(users.ROLES))
def set_role(username, role):
    """Give a user the role ROLE; their existing tokens stop working (they carry the role)."""
    try:
        user = users.set_role(username, role)
    except users.UserError as exc:
        _fail(exc)
    click.echo(f"{user.username!r} now has the {role} role.")


def _set_disabled(username, disabled):
    try:
        users.set_disabled(username, disabled)
    except users.UserError as exc:
        _fail(exc)
    click.echo(f"{'Disabled' if disabled else 'Enabled'} {username!r}.")


@users_cli.command("disable")
@click.argument("username")
def disable_user(username):
    """Disable a user; their tokens stop working at once."""
    _set_disabled(username, True)


@users_cli.command("enable")
@click.argument("username")
def enable_user(username):
    """Enable a disabled user."""
    _set_disabled(username, False)


@users_cli.command("delete")
@click.argument("username")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete_user(username, yes):
    """Delete a user; their tokens stop working at once."""
    try:
        users.get(username)
    except users.UserError as exc:
        _fail(exc)
    if not yes:
        click.confirm(f"Delete user {username!r}?", abort=True)
    users.delete(username)
    click.echo(f"Deleted {username!r}.")


@users_cli.command("set-password")
@click.argument("username")
@click.option("--password", help="New password; prompted for, hidden, when omitted.")
def set_password(username, password):
    """Set a user's password; the user's existing tokens stop working."""
    try:
        users.get(username)
        if password is None:
            password = click.prompt("New password", hide_input=True, confirmation_prompt=True)
        users.change_password(username, password)
    except users.UserError as exc:
        _fail(exc)
    click.echo(f"Password changed for {username!r}.")


class MigrationsGroup(click.Group):
    """``flask db ...``: Flask-Migrate's commands, imported only when the CLI asks for them."""

    def _commands(self, ctx):
        from flask.cli import ScriptInfo
        from flask_migrate.cli import db as migrate_cli

        from mlapi.database import init_migrations

        init_migrations(ctx.ensure_object(ScriptInfo).load_app())
        return migrate_cli

    def list_commands(self, ctx):
        return self._commands(ctx).list_commands(ctx)

    def get_command(self, ctx, name):
        return self._commands(ctx).get_command(ctx, name)


@click.group("db", cls=MigrationsGroup)
@click.option("-d", "--directory", default=None, help="Migration script directory.")
@click.option("-x", "--x-arg", multiple=True, help="Extra arguments for env.py.")
@with_appcontext
def db_cli(directory, x_arg):
    """Database migrations (Flask-Migrate): upgrade, migrate, current, history, ..."""
    # Flask-Migrate's own group does this; its commands read them.
    g.directory = directory
    g.x_arg = x_arg


models_cli = AppGroup("models", help="Inspect prediction models and check model files.")


@models_cli.command("list")
def list_models():
    """List models: name, version, readiness (with the reason when not ready), inputs."""
    models = registry()
    rows = [
        (name, version, "yes", _describe_inputs(models.get(name, version)))
        for name in sorted({model.name for model in models})
        for version in models.versions(name)
    ]
    for key, reason in sorted(models.snapshot.failures.items()):
        name, _, version = key.partition("/")
        rows.append((name, version or "-", "no", reason))
    name_width = max(len("NAME"), *(len(row[0]) for row in rows))
    version_width = max(len("VERSION"), *(len(row[1]) for row in rows))
    click.echo(f"{'NAME':<{name_width}}  {'VERSION':<{version_width}}  READY  INPUTS")
    for name, version, ready, detail in rows:
        click.echo(f"{name:<{name_width}}  {version:<{version_width}}  {ready:<5}  {detail}")


def _describe_inputs(model):
    tensor = getattr(model, "input_tensor", None)
    if tensor is not None:
        return tensor.describe()
    return ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in model.inputs)


@models_cli.command("check")
@click.argument("path", type=click.Path(exists=True))
def check_model(path):
    """Load PATH and run it on zeros: a model file, or a repository folder (every model)."""
    if os.path.isdir(path):
        _check_repository(path)
        return
    suffix = os.path.splitext(path)[1].lower()
    if suffix in REFUSED and suffix not in PICKLE_SUFFIXES:
        _fail(f"{path}: refused: {REFUSED[suffix]}.")
    try:
        if suffix == ".onnx":
            model = load_onnx(path, current_app.config["ONNX_THREADS"])
            outputs = model.predict({spec.name: _zeros(spec) for spec in model.inputs})
            click.echo(f"{path}: ONNX model ({model.platform})")
            for spec in model.inputs:
                click.echo(f"  input  {spec.name} {spec.datatype} {list(spec.shape)}")
            for spec in model.outputs:
                click.echo(f"  output {spec.name} {spec.datatype} {list(spec.shape)}")
            for name, value in outputs.items():
                click.echo(f"  {name} on zeros: {np.asarray(value).ravel()[:5].tolist()!r}")
            return
        model = load_file(path, current_app.config["MAX_FEATURES"])
        value = model.predict(np.zeros((1, model.n_features or 1)))[0]
    except ModelLoadError as exc:
        _fail(exc)
    except PredictionError as exc:
        _fail(f"{path}: {exc.detail}")
    click.echo(f"{path}: {model.kind} model {model.name}:{model.version}")
    click.echo(f"  input  {model.input_tensor.describe()}")
    click.echo(f"  output {model.output_tensor.describe()}")
    click.echo(f"  prediction on zeros: {float(value)!r}")


def _zeros(spec):
    """A batch of one row of zeros (empty strings for BYTES) in the tensor's declared shape."""
    shape = [1 if dim == -1 else dim for dim in spec.shape]
    if spec.datatype == "BYTES":
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype])


def _check_repository(path):
    """Load every model of the repository at ``path`` as the server would; fail if one fails."""
    config = current_app.config
    try:
        snapshot = build(path, LoadSettings(config["MAX_FEATURES"], config["ONNX_THREADS"]))
    except ModelLoadError as exc:
        _fail(exc)
    for model in sorted(_repository_models(snapshot), key=lambda m: (m.name, m.version)):
        click.echo(f"ok      {model.name}:{model.version}  {model.source}")
    for key, reason in sorted(snapshot.failures.items()):
        click.echo(f"failed  {key}: {reason}")
    if snapshot.failures:
        _fail(f"{len(snapshot.failures)} model(s) or version(s) in {path} cannot be served.")


def _repository_models(snapshot):
    return [
        model
        for versions in snapshot.models.values()
        for model in versions.values()
        if model.source != "built-in"
    ]


@models_cli.command("load")
@click.argument("name")
def load_model(name):
    """Load model NAME from MLAPI_MODEL_DIR again; running workers follow at their next poll."""
    if not current_app.config.get("MODEL_DIR"):
        _fail("MLAPI_MODEL_DIR is not set: there is no repository to load from.")
    snapshot = _change_repository(reloader().load, name)
    versions = snapshot.models.get(name, {})
    failures = {k: v for k, v in snapshot.failures.items() if k.split("/")[0] == name}
    for version in sorted(versions):
        click.echo(f"ok      {name}:{version}")
    for key, reason in sorted(failures.items()):
        click.echo(f"failed  {key}: {reason}")
    if not versions:
        _fail(
            f"Model {name!r} is not served."
            if failures
            else f"No model {name!r} in the repository."
        )


@models_cli.command("unload")
@click.argument("name")
def unload_model(name):
    """Stop serving model NAME on every worker until ``flask models load NAME``."""
    if name not in (registry().snapshot.scan.models if registry().snapshot.scan else {}):
        _fail(f"No model folder {name!r} in the repository.")
    _change_repository(reloader().unload, name)
    click.echo(f"Unloaded {name!r}; running workers follow at their next poll.")


def _change_repository(action, name):
    try:
        return action(name)
    except ControlUnavailable as exc:
        _fail(f"Not changed: {exc}. Retry when it is back.")


def init_app(app):
    app.cli.add_command(users_cli)
    app.cli.add_command(db_cli)
    app.cli.add_command(models_cli)
