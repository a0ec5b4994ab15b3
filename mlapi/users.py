"""Users: the operations the API and the CLI share, in plain SQL on the ``users`` table
(mlapi.schema defines it for the migrations)."""

import secrets
from collections import namedtuple
from dataclasses import dataclass
from datetime import UTC, datetime

from flask import current_app
from werkzeug.security import check_password_hash, generate_password_hash

from mlapi import credentials, revocation, sql
from mlapi.credentials import UserError, username_key
from mlapi.database import identity_change
from mlapi.extensions import db

__all__ = ["ROLES", "Principal", "User", "UserError", "username_key"]

ROLES = ("user", "admin")
# Checked when the username is unknown, so that both failures cost the same time.
_dummy_hashes = {}

COLUMNS = (
    "id",
    "username",
    "username_key",
    "email",
    "password_hash",
    "role",
    "disabled",
    "created_at",
    "token_key",
)
# A row of ``users``: username as spelt at creation; username_key what names are compared
# by (credentials.username_key); token_key carried by every token as its "tkey" claim.
User = namedtuple("User", COLUMNS)
SELECT_USER = f"SELECT {', '.join('users.' + c for c in COLUMNS)} FROM users"


def _user(row):
    if row is None:
        return None
    values = dict(zip(COLUMNS, row, strict=True))
    values["disabled"] = bool(values["disabled"])  # SQLite stores 0 or 1
    values["created_at"] = db.read_time(values["created_at"])
    return User(**values)


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
    :class:`User`), or None."""
    if not credentials.lookupable(username):
        return None
    with db.connect() as conn:
        row = conn.first(
            SELECT_USER + " WHERE users.username_key = :key", {"key": username_key(username)}
        )
    return _user(row)


def get(username):
    """The user called ``username``; raises UserError if there is none."""
    user = find(username)
    if user is None:
        raise UserError(f"No user named {username!r}.")
    return user


def _update(user, **values):
    # Column names come from this module's callers, never from a request.
    assignments = ", ".join(f"{column} = :{column}" for column in values)
    with identity_change() as conn:
        conn.execute(
            f"UPDATE users SET {assignments} WHERE users.id = :id", {**values, "id": user.id}
        )


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
        "created_at": db.time(datetime.now(UTC)),
    }
    try:
        with identity_change() as conn:
            conn.execute(
                f"INSERT INTO users ({', '.join(values)}) "
                f"VALUES ({', '.join(':' + column for column in values)})",
                values,
            )
    except sql.IntegrityError:
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
    with db.connect() as conn:
        rows = conn.all(SELECT_USER + " ORDER BY users.username_key")
    return [_user(row) for row in rows]


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
        conn.execute("DELETE FROM users WHERE users.id = :id", {"id": user.id})


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


# The user and the session's revocation, on the unique index of the name's key.
_PRINCIPAL = (
    "SELECT users.username, users.email, users.role, users.disabled, users.token_key, "
    f"({revocation.REVOKED_UNTIL}) AS revoked_until "
    "FROM users WHERE users.username_key = :key"
)


def load_principal(username, sid):
    """Read the user a token names and whether its session is revoked, in one SELECT.

    This runs on every authenticated request: one statement on this thread's connection,
    on the unique index of the name's key. Returns (Principal or None, revoked).
    """
    with db.connect() as conn:
        row = conn.first(_PRINCIPAL, {"key": username_key(username), "sid": sid})
    if row is None:
        return None, False
    username, email, role, disabled, token_key, revoked_until = row
    principal = Principal(username, email, role, bool(disabled), token_key)
    return principal, revocation.still_revoked(db.read_time(revoked_until))


def accepts(principal, claims):
    """Whether ``principal`` still accepts a token with these claims."""
    return (
        principal is not None
        and not principal.disabled
        and claims.get("tkey", "") == (principal.token_key or "")
    )
