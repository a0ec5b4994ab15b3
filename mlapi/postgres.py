"""A client-side deadline on every PostgreSQL round trip (psycopg 3)."""

import psycopg


class DeadlineExceeded(psycopg.OperationalError):
    """The server did not answer within the deadline; the connection is closed."""


class DeadlineConnection(psycopg.Connection):
    """A psycopg connection that waits at most ``deadline`` seconds for any answer.

    A frozen server (a paused VM or process) still has its kernel acknowledge packets, so
    neither the statement timeout (the server's) nor TCP timeouts end the wait; this does.
    A connection given up on mid-answer cannot be reused: it is closed, and mlapi.sql then
    opens a new one for the thread's next statement (without trying this one again).
    ``_WaitTimeout`` is psycopg's private name (psycopg is pinned,
    and tests/unit/test_pinned_internals.py checks it).
    """

    deadline = None

    def wait(self, gen, interval=0.1, timeout=None):
        if timeout is not None or not self.deadline:
            return super().wait(gen, interval=interval, timeout=timeout)
        try:
            return super().wait(gen, interval=interval, timeout=self.deadline)
        except psycopg.errors._WaitTimeout:
            self.pgconn.finish()
            raise DeadlineExceeded(
                f"PostgreSQL did not answer within {self.deadline}s; connection closed"
            ) from None
