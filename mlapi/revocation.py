"""Token revocation, shared by every worker and host.

Logging out revokes a login session: the access token presented, the refresh
token issued with it (both carry the session id ``sid``), and every access
token refreshed from it. Entries live until the session's tokens would have
expired, and no longer.

The database holds every revocation. With Redis configured, each is also
written there and checked there (one round trip per request). Redis is never
the only record: if it fails, checks fall back to the database, and if it
restarts empty (a ``loaded`` marker is gone), the unexpired revocations are
copied back from the database before it is trusted again.
"""

import logging
import time
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.exceptions import ServiceUnavailable

from mlapi.extensions import db

log = logging.getLogger(__name__)


class RevokedSession(db.Model):
    __tablename__ = "revoked_tokens"

    sid: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), index=True)


_EXPIRY = sa.select(RevokedSession.expires_at).where(RevokedSession.sid == sa.bindparam("sid"))


class Revocations:
    def __init__(self, redis=None, breaker=None, prefix="mlapi:"):
        self.redis = redis
        self.breaker = breaker
        self.prefix = prefix + "revoked:"
        self.marker = prefix + "revoked-loaded"

    def revoke(self, sid, expires_at):
        """Revoke session ``sid`` until ``expires_at`` (a POSIX timestamp)."""
        now = datetime.now(UTC)
        db.session.execute(sa.delete(RevokedSession).where(RevokedSession.expires_at < now))
        db.session.merge(
            RevokedSession(sid=sid, expires_at=datetime.fromtimestamp(expires_at, UTC))
        )
        db.session.commit()
        if self.redis is None:
            return
        try:
            self.breaker.call(self._mirror, sid, expires_at)
        except Exception:
            log.warning("revocation stored in the database but not in Redis", exc_info=True)
            raise ServiceUnavailable(
                "The logout was recorded but could not be shared with every server; retry it."
            ) from None

    def is_revoked(self, sid):
        if self.redis is not None:
            try:
                loaded, revoked = self.breaker.call(self.redis.mget, self.marker, self.prefix + sid)
                if loaded is not None:
                    return revoked is not None
                self.breaker.call(self._reload)
            except Exception:
                log.debug("revocation check falls back to the database", exc_info=True)
        with db.engine.connect() as conn:
            expires_at = conn.execute(_EXPIRY, {"sid": sid}).scalar()
        return expires_at is not None and _aware(expires_at) > datetime.now(UTC)

    def _mirror(self, sid, expires_at):
        ttl = max(1, int(expires_at - time.time()) + 1)
        self.redis.set(self.prefix + sid, 1, ex=ttl)

    def _reload(self):
        """Copy unexpired revocations from the database into an empty Redis."""
        now = datetime.now(UTC)
        rows = db.session.scalars(
            sa.select(RevokedSession).where(RevokedSession.expires_at > now)
        ).all()
        for row in rows:
            self._mirror(row.sid, _aware(row.expires_at).timestamp())
        self.redis.set(self.marker, 1)
        log.info("reloaded %d revocations into Redis", len(rows))


def _aware(moment):
    """SQLite returns naive datetimes; they were stored in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
