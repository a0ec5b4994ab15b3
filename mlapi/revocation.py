"""Token revocation, shared by every worker and host through the database.

Logging out revokes a login session: the access token presented, the refresh
token issued with it (both carry the session id ``sid``), and every access
token refreshed from it. A revocation is a row kept until the session's tokens
would have expired, and no longer.

The check costs no round trip of its own: every authenticated request already
reads its user from the shared database, and the same SELECT reads the
session's revocation (``users.load_principal``). Keeping revocations out of
Redis means no cache can ever disagree with the record: a Redis outage,
restart or eviction cannot bring a revoked token back.
"""

from datetime import UTC, datetime

import sqlalchemy as sa

from mlapi.database import identity_change
from mlapi.extensions import db


def upsert_insert(dialect_name):
    """The dialect's INSERT with ON CONFLICT, or None. Imported on first logout: a
    worker loads only its own database's dialect (the other costs about 2 MiB)."""
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect_name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        return None
    return insert


revoked_table = sa.Table(
    "revoked_tokens",
    db.metadata,
    sa.Column("sid", sa.String(64), primary_key=True),
    sa.Column("expires_at", sa.DateTime(timezone=True), index=True, nullable=False),
)


def revoke(sid, expires_at):
    """Revoke session ``sid`` until ``expires_at`` (a POSIX timestamp); idempotent, so
    concurrent logouts of one session both succeed."""
    until = datetime.fromtimestamp(expires_at, UTC)
    with identity_change() as conn:
        conn.execute(sa.delete(revoked_table).where(revoked_table.c.expires_at < datetime.now(UTC)))
        insert = upsert_insert(conn.dialect.name)
        if insert is None:  # another database: update, else insert (not safe under races)
            updated = conn.execute(
                sa.update(revoked_table).where(revoked_table.c.sid == sid).values(expires_at=until)
            )
            if not updated.rowcount:
                conn.execute(sa.insert(revoked_table).values(sid=sid, expires_at=until))
        else:
            statement = insert(revoked_table).values(sid=sid, expires_at=until)
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=[revoked_table.c.sid], set_={"expires_at": until}
                )
            )


def revoked_until_column(sid_param="sid"):
    """A scalar subquery: when session ``:sid`` stops being revoked (NULL if it is not)."""
    return (
        sa.select(revoked_table.c.expires_at)
        .where(revoked_table.c.sid == sa.bindparam(sid_param))
        .scalar_subquery()
    )


def still_revoked(revoked_until):
    if revoked_until is None:
        return False
    aware = revoked_until if revoked_until.tzinfo else revoked_until.replace(tzinfo=UTC)
    return aware > datetime.now(UTC)
