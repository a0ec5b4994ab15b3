"""Users: the SQL table and the operations the API and the CLI share (SQLAlchemy Core)."""

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from flask import current_app
from werkzeug.security import check_password_hash, generate_password_hash

from mlapi import credentials, revocation
from mlapi.credentials import UserError, username_key
from mlapi.database import identity_change
from mlapi.extensions import db

__all__ = ["ROLES", "Principal", "UserError", "user_table", "username_key"]

ROLES = ("user", "admin")
# Checked when the username is unknown, so that both failures cost the same time.
_dummy_hashes = {}

user_table = sa.Table(
    "users",
    db.metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    # As spelt at creation, for display (token "sub", /users/me).
    sa.Column("username", sa.String(64), unique=True, nullable=False),
    # What names are compared by (credentials.username_key): every lookup uses it.
    sa.Column("username_key", sa.String(256), unique=True, index=True, nullable=False),
    sa.Column("email", sa.String(254)),
    sa.Column("password_hash", sa.String(256), nullable=False),
    sa.Column("role", sa.String(16), default="user", nullable=False),
    sa.Column("disabled", sa.Boolean, default=False, nullable=False),
    sa.Column(
        "created_at",
        sa.DateTime(timezone=True),
        default=lambda: datetime.now(UTC),
        nullable=False,
    ),
    # Carried by every token as the "tkey" claim and compared on each request. A new
    # random key on creation, password change or disabling ends every earlier session,
    # including those of a deleted user whose name is taken again.
    sa.Column("token_key", sa.String(32)),
)


def new_token_key():
    """A fresh token key: the user's tokens issued until now stop working."""
    return secrets.token_hex(8)


def hash_password(password, username):
    """The hash to store for ``password``, after checking it against the rules."""
    credentials.check_password(password, username)
    return generate_password_hash(password, method=hash_method())


def hash_method():
    """werkzeug's method string, e.g. "scrypt:32768:8:1" (MLAPI_PASSWORD_HASH_METHOD)."""
    return current_app.config["PASSWORD_HASH_METHOD"]


def _dummy_hash():
    method = hash_method()
    if method not in _dummy_hashes:
        _dummy_hashes[method] = generate_password_hash("not-a-real-password", method=method)
    return _dummy_hashes[method]


def find(username):
    """The user whose name matches ``username`` ignoring case and Unicode width (a row of
    ``user_table``), or None."""
    if not credentials.lookupable(username):
        return None
    query = sa.select(user_table).where(user_table.c.username_key == username_key(username))
    with db.engine.connect() as conn:
        return conn.execute(query).first()


def get(username):
    """The user called ``username``; raises UserError if there is none."""
    user = find(username)
    if user is None:
        raise UserError(f"No user named {username!r}.")
    return user


def _update(user, **values):
    with identity_change() as conn:
        conn.execute(sa.update(user_table).where(user_table.c.id == user.id).values(**values))


def create(username, password, email=None, role="user"):
    """Create a user after checking name, e-mail, role and password against the rules."""
    credentials.check_username(username)
    if email is not None:
        email = credentials.check_email(email)
    check_role(role)
    existing = find(username)
    if existing is not None:
        raise UserError(_taken(username, existing))
    values = {
        "username": username,
        "username_key": username_key(username),
        "email": email,
        "role": role,
        "disabled": False,
        "password_hash": hash_password(password, username),
        # A fresh key: tokens of an earlier user of this name do not apply.
        "token_key": new_token_key(),
    }
    try:
        with identity_change() as conn:
            conn.execute(sa.insert(user_table).values(**values))
    except sa.exc.IntegrityError:
        raise UserError(_taken(username, find(username))) from None
    return get(username)


def _taken(username, existing):
    if existing is None or existing.username == username:
        return f"User {username!r} already exists."
    return (
        f"User {username!r} already exists as {existing.username!r}: "
        "names that differ only in case or Unicode width are the same name."
    )


def check_role(role):
    if role not in ROLES:
        raise UserError(f"Role must be one of {', '.join(ROLES)}.")


def set_role(username, role):
    """Give a user another role and end their sessions (their tokens carry the old role)."""
    check_role(role)
    user = get(username)
    if user.role == role:
        return user
    _update(user, role=role, token_key=new_token_key())
    return get(username)


def all_users():
    """Every user, by name."""
    with db.engine.connect() as conn:
        return conn.execute(sa.select(user_table).order_by(user_table.c.username_key)).all()


def set_disabled(username, disabled):
    """Disable or enable a user; disabling ends their sessions, and enabling later does
    not bring the old tokens back."""
    ends_sessions = {"token_key": new_token_key()} if disabled else {}
    _update(get(username), disabled=disabled, **ends_sessions)


def change_password(username, password):
    """Set a user's password; sessions opened with the old one end everywhere."""
    user = get(username)
    _update(user, password_hash=hash_password(password, user.username), token_key=new_token_key())


def delete(username):
    """Delete a user; their tokens stop working at once (the user is gone)."""
    user = get(username)
    with identity_change() as conn:
        conn.execute(sa.delete(user_table).where(user_table.c.id == user.id))


def authenticate(username, password):
    """The enabled user with these credentials, or None. Takes the same time either way."""
    user = find(username)
    if user is None:
        check_password_hash(_dummy_hash(), password)
        return None
    if not check_password_hash(user.password_hash, password) or user.disabled:
        return None
    if not user.password_hash.startswith(hash_method() + "$"):
        # The configured hash parameters changed since this password was set: upgrade it.
        _update(user, password_hash=generate_password_hash(password, method=hash_method()))
    return user


@dataclass(frozen=True)
class Principal:
    """The authenticated user of a request: a read-only snapshot of their row."""

    username: str
    email: str | None
    role: str
    disabled: bool
    token_key: str | None

    @property
    def is_admin(self):
        return self.role == "admin"

    def to_public(self):
        return {"username": self.username, "email": self.email, "disabled": self.disabled}


_PRINCIPAL = sa.select(
    user_table.c.username,
    user_table.c.email,
    user_table.c.role,
    user_table.c.disabled,
    user_table.c.token_key,
    revocation.revoked_until_column().label("revoked_until"),
).where(user_table.c.username_key == sa.bindparam("key"))


def load_principal(username, sid):
    """Read the user a token names and whether its session is revoked, in one SELECT.

    This runs on every authenticated request: a plain query on a pooled connection,
    without an ORM session, on the unique index of the name's key. Returns
    (Principal or None, revoked).
    """
    with db.engine.connect() as conn:
        row = conn.execute(_PRINCIPAL, {"key": username_key(username), "sid": sid}).first()
    if row is None:
        return None, False
    return Principal(*row[:5]), revocation.still_revoked(row.revoked_until)


def accepts(principal, claims):
    """Whether ``principal`` still accepts a token with these claims."""
    return (
        principal is not None
        and not principal.disabled
        and claims.get("tkey", "") == (principal.token_key or "")
    )
