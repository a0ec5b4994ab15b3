"""How the buffering worker finds the end of a request, and the gunicorn internals it uses."""

import inspect

import gunicorn
import pytest
from gunicorn.http.body import CHUNK_EXT_RE, Body, ChunkedReader
from gunicorn.http.message import Request
from gunicorn.http.unreader import Unreader
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

from mlapi.worker import PendingRequest

P = PendingRequest
HEAD = b"POST /v1/predict HTTP/1.1\r\nHost: mlapi\r\n"


def scan(data, max_body=100):
    return P(data, 0.0, max_head=200, max_body=max_body).scan()


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: mlapi\r\n", P.INCOMPLETE),
        (b"GET / HTTP/1.1\r\nHost: mlapi\r\n\r\n", P.COMPLETE),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 300, P.HEAD_TOO_LARGE),
        (HEAD + b"Content-Length: 5\r\n\r\n1234", P.INCOMPLETE),
        (HEAD + b"content-length:5\r\n\r\n12345", P.COMPLETE),
        (HEAD + b"Content-Length: 5\r\n\r\n12345GET / HTTP/1.1\r\n", P.COMPLETE),
        (HEAD + b"Content-Length: 101\r\n\r\n", P.BODY_TOO_LARGE),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", P.INCOMPLETE),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n", P.INCOMPLETE),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\n\r\n", P.COMPLETE),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n0\r\nT: 1\r\n", P.INCOMPLETE),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n0\r\nT: 1\r\n\r\n", P.COMPLETE),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n65\r\n", P.BODY_TOO_LARGE),
        # Chunks are read by gunicorn's grammar; what its parser would refuse, this refuses
        # (400) at once, never waiting for a body that gunicorn would frame differently.
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", P.MALFORMED),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n3zz\r\nabc\r\n", P.MALFORMED),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n", P.MALFORMED),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n 3\r\nabc\r\n", P.MALFORMED),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n", P.MALFORMED),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n", P.MALFORMED),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n", P.MALFORMED),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n3;\x01\r\nabc\r\n0\r\n\r\n", P.MALFORMED),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n", P.MALFORMED),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc0\r\n\r\n", P.MALFORMED),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n3" + b"a" * 9000, P.MALFORMED),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n3;x=" + b"a" * 9000, P.MALFORMED),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n0\r\nT: " + b"a" * 300, P.HEAD_TOO_LARGE),
        # ... and what it accepts, it ends exactly where gunicorn does.
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n0003\r\nabc\r\n000\r\n\r\n", P.COMPLETE),
        (HEAD + b'Transfer-Encoding: chunked\r\n\r\n3 ; a="b"\r\nabc\r\n0\r\n\r\n', P.COMPLETE),
        (HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", P.COMPLETE),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"f" * 40 + b"\r\n", P.BODY_TOO_LARGE),
        # Framing gunicorn refuses in the head is handed over at once, for its 400.
        (HEAD + b"Transfer-Encoding: xchunked\r\n\r\n", P.COMPLETE),
        (HEAD + b"Transfer-Encoding: chunked, identity\r\n\r\n", P.COMPLETE),
        (HEAD + b"Transfer-Encoding: chunked\r\n , gzip\r\n\r\n", P.COMPLETE),
        (HEAD + b"Content-Length: 5, 5\r\n\r\n", P.COMPLETE),
        (HEAD + b"Content-Length : 5\r\n\r\n", P.COMPLETE),
        (b"GET / HTTP/1.1\nHost: mlapi\n\n", P.COMPLETE),
        (b"GET / HTTP/1.1\r\nHost: mlapi\r\n\n", P.COMPLETE),
        # Too many digits for int() (4300): too large, never an error in the event loop.
        (HEAD + b"Content-Length: " + b"1" * 5000 + b"\r\n\r\n", P.BODY_TOO_LARGE),
        (HEAD + b"Content-Length: " + b"0" * 5000 + b"5\r\n\r\n12345", P.COMPLETE),
        (HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", P.COMPLETE),
        (HEAD + b"Content-Length: +5\r\n\r\n", P.COMPLETE),
        (HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", P.COMPLETE),
        (HEAD + b"Transfer-Encoding: gzip\r\n\r\n", P.COMPLETE),
    ],
)
def test_framing(data, status):
    assert scan(data) == status


def test_a_request_arriving_a_byte_at_a_time_completes_exactly_at_its_last_byte():
    request = HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    pending = P(b"", 0.0, max_head=200, max_body=100)
    statuses = []
    for byte in range(len(request)):
        pending.data = request[: byte + 1]
        statuses.append(pending.scan())
    assert statuses == [P.INCOMPLETE] * (len(request) - 1) + [P.COMPLETE]


def test_a_body_arriving_in_many_pieces_is_kept_whole():
    pending = P(HEAD + b"Content-Length: 5\r\n\r\n", 0.0, 200, 100)
    assert pending.scan() == P.INCOMPLETE
    pending.data = bytearray(pending.data)
    for byte in b"12345":
        pending.data += bytes([byte])
    assert pending.scan() == P.COMPLETE


def test_expect_100_continue_is_noticed():
    pending = P(HEAD + b"Expect: 100-Continue\r\nContent-Length: 3\r\n\r\n", 0.0, 200, 100)
    assert pending.scan() == P.INCOMPLETE
    assert pending.expects_continue
    http_1_0 = HEAD.replace(b"HTTP/1.1", b"HTTP/1.0")
    pending = P(http_1_0 + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\n", 0.0, 200, 100)
    assert pending.scan() == P.INCOMPLETE
    assert not pending.expects_continue


def test_the_gunicorn_internals_the_worker_relies_on_still_hold():
    """mlapi/worker.py subclasses gthread's private machinery: pinned, and checked here."""
    assert gunicorn.__version__ == "27.0.1"
    for name in (
        "enqueue_req",
        "finish_request",
        "handle_request",
        "murder_pending",
        "wait_for_and_dispatch_events",
        "set_accept_enabled",
        "handle_exit",
    ):
        assert callable(getattr(ThreadWorker, name)), name
    assert list(inspect.signature(ThreadWorker.finish_request).parameters) == ["self", "conn", "fs"]
    init = inspect.getsource(TConn.__init__) + inspect.getsource(ThreadWorker.handle)
    for field in ("self.parser", "self.initialized", "conn.initialized"):
        assert field in init, field
    assert callable(Unreader.take_buffered) and callable(Unreader.unread)
    # Chunks are framed by gunicorn's own extension grammar; a body is decoded up front.
    assert CHUNK_EXT_RE.fullmatch(b' ; a=b;c="d"') and not CHUNK_EXT_RE.fullmatch(b";\x01")
    assert list(inspect.signature(Body.__init__).parameters) == ["self", "reader"]
    assert "self.reader" in inspect.getsource(Body.__init__)
    assert callable(ChunkedReader.read)
    assert STOP_KEEPALIVE_LINGER == 2.0
    assert Request._expected_100_continue is False
