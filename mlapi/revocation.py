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

from mlapi.database import identity_change
from mlapi.extensions import db

# When session ``:sid`` stops being revoked (NULL if it is not): a scalar subquery of the
# SELECT that reads the user (users.load_principal).
REVOKED_UNTIL = (
    "SELECT revoked_tokens.expires_at FROM revoked_tokens WHERE revoked_tokens.sid = :sid"
)


def revoke(sid, expires_at):
    """Revoke session ``sid`` until ``expires_at`` (a POSIX timestamp); idempotent, so
    concurrent logouts of one session both succeed."""
    until = db.time(datetime.fromtimestamp(expires_at, UTC))
    with identity_change() as conn:
        conn.execute(
            "DELETE FROM revoked_tokens WHERE revoked_tokens.expires_at < :now",
            {"now": db.time(datetime.now(UTC))},
        )
        # PostgreSQL and SQLite (3.24 and later) both upsert with ON CONFLICT.
        conn.execute(
            "INSERT INTO revoked_tokens (sid, expires_at) VALUES (:sid, :until) "
            "ON CONFLICT (sid) DO UPDATE SET expires_at = excluded.expires_at",
            {"sid": sid, "until": until},
        )


def still_revoked(revoked_until):
    if revoked_until is None:
        return False
    aware = revoked_until if revoked_until.tzinfo else revoked_until.replace(tzinfo=UTC)
    return aware > datetime.now(UTC)
