"""Admin commands: ``flask --app wsgi users ...`` and ``flask --app wsgi models ...``."""

import json

import click
import numpy as np
from flask import current_app, g
from flask.cli import AppGroup, with_appcontext

from mlapi import users
from mlapi.predictions import registry
from mlapi.serving.errors import ModelLoadError, PredictionError
from mlapi.serving.loading import load_file

users_cli = AppGroup("users", help="Manage API users.")


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
    """List models: name, version, declared inputs, and readiness."""
    models = registry()
    rows = [
        models.get(name, version)
        for name in sorted({model.name for model in models})
        for version in models.versions(name)
    ]
    name_width = max(len("NAME"), *(len(m.name) for m in rows))
    version_width = max(len("VERSION"), *(len(m.version) for m in rows))
    click.echo(f"{'NAME':<{name_width}}  {'VERSION':<{version_width}}  READY  INPUTS")
    for model in rows:
        # Models load at start or the app does not start, so every listed model is ready.
        click.echo(
            f"{model.name:<{name_width}}  {model.version:<{version_width}}  yes    "
            f"{model.input_tensor.describe()}"
        )


@models_cli.command("check")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def check_model(path):
    """Load the model file PATH and run one prediction on zeros."""
    try:
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


def init_app(app):
    app.cli.add_command(users_cli)
    app.cli.add_command(db_cli)
    app.cli.add_command(models_cli)
