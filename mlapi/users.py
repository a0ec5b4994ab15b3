"""Users: the SQL model and the operations the API and the CLI share."""

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.security import check_password_hash, generate_password_hash

from mlapi.extensions import db

ROLES = ("user", "admin")
MIN_PASSWORD_LENGTH = 8
# Checked when the username is unknown, so that both failures cost the same time.
_dummy_hashes = {}


class UserError(Exception):
    """A user operation that cannot be done (duplicate, unknown user, weak password)."""


class User(db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    email: Mapped[str | None] = mapped_column(sa.String(254))
    password_hash: Mapped[str] = mapped_column(sa.String(256))
    role: Mapped[str] = mapped_column(sa.String(16), default="user")
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), default=lambda: datetime.now(UTC)
    )
    # Tokens issued (iat, POSIX seconds) before this are refused: set when the password
    # changes or the user is disabled, so those sessions end everywhere at once.
    tokens_valid_after: Mapped[int | None] = mapped_column(sa.BigInteger)

    @property
    def is_admin(self):
        return self.role == "admin"

    def set_password(self, password):
        check_password(password)
        self.password_hash = generate_password_hash(password, method=hash_method())

    def revoke_tokens(self):
        """Refuse every token issued until now (and within this second)."""
        self.tokens_valid_after = int(time.time()) + 1

    def to_public(self):
        return {"username": self.username, "email": self.email, "disabled": self.disabled}


def hash_method():
    """werkzeug's method string, e.g. "scrypt:32768:8:1" (MLAPI_PASSWORD_HASH_METHOD)."""
    return current_app.config["PASSWORD_HASH_METHOD"]


def _dummy_hash():
    method = hash_method()
    if method not in _dummy_hashes:
        _dummy_hashes[method] = generate_password_hash("not-a-real-password", method=method)
    return _dummy_hashes[method]


def check_password(password):
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"Password must be at least {MIN_PASSWORD_LENGTH} characters.")


def find(username):
    return db.session.scalar(sa.select(User).where(User.username == username))


def get(username):
    """The user called ``username``; raises UserError if there is none."""
    user = find(username)
    if user is None:
        raise UserError(f"No user named {username!r}.")
    return user


def create(username, password, email=None, role="user"):
    if not username or len(username) > 64 or username != username.strip():
        raise UserError("Username must be 1 to 64 characters without surrounding spaces.")
    if role not in ROLES:
        raise UserError(f"Role must be one of {', '.join(ROLES)}.")
    if find(username) is not None:
        raise UserError(f"User {username!r} already exists.")
    user = User(username=username, email=email, role=role, disabled=False)
    user.set_password(password)
    db.session.add(user)
    try:
        db.session.commit()
    except sa.exc.IntegrityError:
        db.session.rollback()
        raise UserError(f"User {username!r} already exists.") from None
    return user


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
        user.password_hash = generate_password_hash(password, method=hash_method())
        db.session.commit()
    return user


@dataclass(frozen=True)
class Principal:
    """The authenticated user of a request: a read-only snapshot of their row."""

    username: str
    email: str | None
    role: str
    disabled: bool
    tokens_valid_after: int | None

    @property
    def is_admin(self):
        return self.role == "admin"

    def to_public(self):
        return {"username": self.username, "email": self.email, "disabled": self.disabled}


_PRINCIPAL = sa.select(
    User.username, User.email, User.role, User.disabled, User.tokens_valid_after
).where(User.username == sa.bindparam("username"))


def active_user(username, issued_at):
    """The user a token names, if they still exist, are enabled, and the token (issued at
    ``issued_at``) is not older than their last password change or disabling.

    This runs on every authenticated request, so it is one plain SELECT on a pooled
    connection, without an ORM session or identity map.
    """
    with db.engine.connect() as conn:
        row = conn.execute(_PRINCIPAL, {"username": username}).first()
    if row is None or row.disabled:
        return None
    if row.tokens_valid_after is not None and issued_at < row.tokens_valid_after:
        return None
    return Principal(*row)
