"""A gunicorn worker that reads each whole request before a thread sees it.

gunicorn's gthread worker (27.0.1) hands a connection to a thread as soon as its first
byte arrives; the thread then reads the head and the body in blocking mode with no
deadline, so a few clients sending a byte at a time hold every thread and the server
stops answering. gunicorn has no setting that bounds those reads.

:class:`BufferingThreadWorker` keeps gthread's threads, keep-alive and shutdown, and
changes one step: the worker's event loop reads a request (head, then body up to the
app's ``MAX_CONTENT_LENGTH``, by Content-Length or chunked) without blocking, and only a
complete request goes to a thread, which parses it from memory. A client that has not
sent its whole request within ``GUNICORN_REQUEST_READ_TIMEOUT`` seconds of its first
byte (or of the connection, for a new one) is answered 408 and closed. Bytes held per
request and per worker are bounded (413, 431, 503), and a thread's sends to a client
that stops reading time out. The loop also closes connections without blocking, where
gthread lingers for up to 2 s in its only event-loop thread.

After a kept-alive response, the thread waits up to ``GUNICORN_FOLLOW_UP_SECONDS``
(2 ms) for the same client's next request, when no other request is waiting for a
thread, and serves it if it arrives whole; anything else goes back to the event loop.
A client that keeps its connection busy is then served without the hand-offs between
the loop and the threads (a pipe write, two wake-ups, two epoll changes per request);
a request of another connection waits at most that long for a thread.

This relies on gthread's internals (``ThreadWorker.enqueue_req``, ``finish_request``,
``handle``, ``TConn`` fields, the parser's unreader) and on ``ThreadPoolExecutor``'s
``_work_queue``; gunicorn is pinned in requirements.txt, and
tests/system/test_slow_clients.py and tests/unit/test_pinned_internals.py check that
they still hold.
"""

import contextlib
import json
import os
import re
import select
import selectors
import socket
import struct
import time
from functools import partial
from io import BytesIO

from gunicorn import http, util
from gunicorn.http.body import CHUNK_EXT_RE, Body, ChunkedReader
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

#: Seconds a client has for its whole request: head and body, from its first byte.
READ_TIMEOUT = float(os.environ.get("GUNICORN_REQUEST_READ_TIMEOUT", "10"))
#: Seconds a thread waits for a client that does not read its response to take more of it.
SEND_TIMEOUT = float(os.environ.get("GUNICORN_RESPONSE_SEND_TIMEOUT", READ_TIMEOUT))
#: Bytes of unfinished requests one worker holds; past it a request in progress gets 503.
MAX_BUFFERED = int(os.environ.get("GUNICORN_MAX_BUFFERED_BYTES", 64 * 1024 * 1024))
#: Body limit when the app has no MAX_CONTENT_LENGTH of its own.
DEFAULT_MAX_BODY = 1024 * 1024
#: Largest request head held (nginx holds 32 KiB at most); larger ones get 431.
MAX_HEAD = 64 * 1024
#: Longest chunk-size line (with its extensions), as gunicorn's default field size.
MAX_CHUNK_LINE = 8190
#: Seconds a closing connection may take to send its last bytes before it is cut.
LINGER_SECONDS = 2.0
RECV_SIZE = 65536
#: Seconds a thread that answered a kept-alive connection waits for that client's next
#: request before it gives the connection back to the event loop (0: never waits).
FOLLOW_UP = float(os.environ.get("GUNICORN_FOLLOW_UP_SECONDS", "0.002"))
_DIGITS = re.compile(rb"[0-9]+")
_OBS_FOLD = re.compile(rb"\r\n[ \t]")
# A chunk-size line as gunicorn's parser reads it: hex digits, then extensions.
_CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]+)" + CHUNK_EXT_RE.pattern)
_FRAMING = re.compile(rb"\r\n(content-length|transfer-encoding|expect):([^\r]*)", re.IGNORECASE)


class PendingRequest:
    """The bytes of a request received so far, and where the request ends in them.

    It only frames, by RFC 9112's rules; gunicorn's parser still validates. A head it
    cannot frame is handed over as it is, and gunicorn refuses it (400). Chunks are
    followed by gunicorn's own grammar, so both always agree where a request ends;
    what its parser would refuse is MALFORMED, and the worker answers 400.
    """

    INCOMPLETE, COMPLETE, HEAD_TOO_LARGE, BODY_TOO_LARGE, MALFORMED = range(5)

    __slots__ = (
        "data",
        "deadline",
        "max_head",
        "max_body",
        "continued",
        "expects_continue",
        "head_end",
        "body_length",
        "chunk_at",
        "chunked_size",
        "searched",
        "held",
    )

    def __init__(self, data, deadline, max_head, max_body):
        self.data = data
        self.deadline = deadline
        self.max_head = max_head
        self.max_body = max_body
        self.continued = False  # this worker has sent "100 Continue"
        self.expects_continue = False
        self.head_end = None  # offset just past the blank line that ends the head
        self.body_length = None  # Content-Length; None for a chunked body
        self.chunk_at = 0  # offset of the next chunk-size line of a chunked body
        self.chunked_size = 0  # sum of the chunk sizes seen so far
        self.searched = 0
        self.held = 0  # bytes of data the worker counts as buffered

    def scan(self):
        """Where the request stands: INCOMPLETE, COMPLETE, HEAD_ or BODY_TOO_LARGE, MALFORMED."""
        data = self.data
        if self.head_end is None:
            found = data.find(b"\r\n\r\n", max(self.searched - 3, 0))
            if found < 0:
                if data.find(b"\n\n", max(self.searched - 1, 0)) >= 0:
                    return self.COMPLETE  # a bare LF ends the head: gunicorn refuses it
                self.searched = len(data)
                return self.HEAD_TOO_LARGE if len(data) > self.max_head else self.INCOMPLETE
            self.head_end = found + 4
            status = self._framing(_FRAMING.findall(data, 0, found + 2))
            if status is not None:
                return status
        if self.body_length is not None:
            return (
                self.COMPLETE if len(data) >= self.head_end + self.body_length else self.INCOMPLETE
            )
        return self._scan_chunks(data)

    def _framing(self, fields):
        """Read the body's framing from the head's fields; a status if that decides it."""
        lengths, codings = [], []
        for name, value in fields:
            name, value = name.lower(), value.strip(b" \t").lower()
            if name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                codings.append(value)
            elif value == b"100-continue":
                # Never to an HTTP/1.0 client (RFC 9110 section 15.2).
                line_end = self.data.find(b"\r\n", 2)
                self.expects_continue = self.data.startswith(b" HTTP/1.1", line_end - 9)
        if not codings and not lengths:
            return self.COMPLETE  # no body
        if _OBS_FOLD.search(self.data, 0, self.head_end):
            return self.COMPLETE  # a folded line, which gunicorn refuses
        if codings:
            if lengths or codings[-1].rsplit(b",", 1)[-1].strip(b" \t") != b"chunked":
                return self.COMPLETE  # gunicorn refuses it
            self.chunk_at = self.head_end
            return None
        if len(lengths) > 1 or not _DIGITS.fullmatch(lengths[0]):
            return self.COMPLETE  # gunicorn refuses it
        # int() refuses over 4300 decimal digits, and this runs in the event loop.
        length = lengths[0].lstrip(b"0")
        self.body_length = int(length or b"0") if len(length) < 20 else self.max_body + 1
        return self.BODY_TOO_LARGE if self.body_length > self.max_body else None

    def _scan_chunks(self, data):
        """Follow the chunks by gunicorn's grammar; MALFORMED where its parser would fail."""
        while True:
            line_end = data.find(b"\r\n", self.chunk_at, self.chunk_at + MAX_CHUNK_LINE + 2)
            if line_end < 0:
                return (
                    self.MALFORMED
                    if len(data) > self.chunk_at + MAX_CHUNK_LINE
                    else self.INCOMPLETE
                )
            size = _CHUNK_SIZE.fullmatch(data, self.chunk_at, line_end)
            if size is None:
                return self.MALFORMED
            size = int(size.group(1), 16)
            if size == 0:
                return self._scan_trailers(data, line_end + 2)
            self.chunked_size += size
            if self.chunked_size > self.max_body:
                return self.BODY_TOO_LARGE
            next_line = line_end + 2 + size + 2
            if len(data) < next_line:
                return self.INCOMPLETE
            if data[next_line - 2 : next_line] != b"\r\n":
                return self.MALFORMED
            self.chunk_at = next_line

    def _scan_trailers(self, data, start):
        """After the last chunk: trailer fields (usually none), then a blank line."""
        if data.startswith(b"\r\n", start):
            return self.COMPLETE
        if data.find(b"\r\n\r\n", max(start, self.searched - 3)) >= 0:
            return self.COMPLETE
        if len(data) - start > self.max_head:
            return self.HEAD_TOO_LARGE
        self.searched = len(data)
        return self.INCOMPLETE


_SEND_TIMEVAL = struct.pack("ll", int(SEND_TIMEOUT), int(SEND_TIMEOUT % 1 * 1e6))


class EndOfInput:
    """The source of a thread's parser: the request is already in the parser's buffer,
    so a read past it finds the end of input instead of waiting on the socket."""

    def recv(self, size):
        return b""


def _problem(status, title, detail, headers=""):
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail})
    return (
        f"HTTP/1.1 {status} {title}\r\nContent-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{headers}\r\n{body}"
    ).encode()


BAD_REQUEST = _problem(400, "Bad Request", "The request body's chunked framing is malformed.")
REQUEST_TIMEOUT = _problem(408, "Request Timeout", "The request was not received in time.")
HEAD_TOO_LARGE = _problem(431, "Request Header Fields Too Large", "The request head is too large.")
BODY_TOO_LARGE = _problem(413, "Content Too Large", "The request body is too large.")
BUSY = _problem(
    503, "Service Unavailable", "Too many requests are arriving at once.", "Retry-After: 1\r\n"
)


_gunicorn_http_date = util.http_date
_date = (0, "")  # (second, its Date header value), replaced whole: safe across threads


def http_date_per_second(timestamp=None):
    """gunicorn's ``util.http_date``, formatted once a second: the Date header has a
    second's resolution, and gunicorn formats it with email.utils on every response."""
    global _date
    if timestamp is not None:
        return _gunicorn_http_date(timestamp)
    now = int(time.time())
    second, text = _date
    if second != now:
        text = _gunicorn_http_date(now)
        _date = (now, text)
    return text


class BufferingThreadWorker(ThreadWorker):
    """gthread whose threads only ever see whole requests; see the module's docstring."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read_timeout = READ_TIMEOUT
        self.max_head = MAX_HEAD
        self.max_body = DEFAULT_MAX_BODY
        self.max_buffered = MAX_BUFFERED
        self.buffered = 0  # bytes held by the requests being read, at most max_buffered
        # Insertion order is deadline order: every entry gets the same timeout.
        self.reading = {}
        self.lingering = {}

    def load_wsgi(self):
        super().load_wsgi()
        config = getattr(self.wsgi, "config", None)
        if config is not None and config.get("MAX_CONTENT_LENGTH"):
            self.max_body = int(config["MAX_CONTENT_LENGTH"])

    def init_process(self):
        if self.cfg.is_ssl or self.cfg.http_protocols != ["h1"]:
            # TLS and HTTP/2 keep gthread's own code paths (mlapi's gunicorn serves neither).
            self.log.warning("TLS or HTTP/2 configured: requests are not read ahead")
            self.enqueue_req = partial(ThreadWorker.enqueue_req, self)
            self.finish_request = partial(ThreadWorker.finish_request, self)
            self.handle = partial(ThreadWorker.handle, self)
            self.handle_request = partial(ThreadWorker.handle_request, self)
        # Read by gunicorn.http.wsgi.Response.default_headers through the module.
        util.http_date = http_date_per_second
        super().init_process()

    def enqueue_req(self, conn):
        """A connection that may carry a request (new, kept alive, or with one pipelined):
        read it here; a thread gets it once it is whole."""
        leftover = b""
        if conn.parser is not None:
            leftover = conn.parser.unreader.take_buffered()
        pending = PendingRequest(
            leftover, time.monotonic() + self.read_timeout, self.max_head, self.max_body
        )
        if conn.parser is None:
            self._wait(conn, pending)  # a new connection: its request comes later
        elif leftover:
            # Back from a thread that read ahead: the socket is blocking, and may be idle.
            conn.sock.setblocking(False)
            self._advance(conn, pending)
        else:
            self._receive(conn, pending)  # a kept-alive connection that is readable

    def _wait(self, conn, pending):
        if conn not in self.reading:
            self.reading[conn] = pending
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _stop_reading(self, conn):
        pending = self.reading.pop(conn, None)
        if pending is not None:
            self.buffered -= pending.held
            self.poller.unregister(conn.sock)

    def _on_readable(self, conn, _sock):
        self._receive(conn, self.reading[conn])

    def _receive(self, conn, pending):
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            self._wait(conn, pending)
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        if not pending.data:
            pending.data = data  # the usual case: the whole request in one read
        elif isinstance(pending.data, bytes):
            pending.data = bytearray(pending.data) + data
        else:
            pending.data += data
        self._advance(conn, pending)

    def _advance(self, conn, pending):
        """Act on what has arrived: wait for more, hand the request over, or refuse it."""
        status = pending.scan()
        if status == PendingRequest.COMPLETE:
            self._dispatch(conn, pending, truncated=False)
        elif status == PendingRequest.INCOMPLETE:
            self._wait(conn, pending)
            self.buffered += len(pending.data) - pending.held
            pending.held = len(pending.data)
            if self.buffered > self.max_buffered:
                # Many large requests at once: refuse the one that grows, not the worker.
                self._refuse(conn, BUSY)
                return
            if pending.expects_continue and not pending.continued:
                pending.continued = True
                self._send(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
        elif status == PendingRequest.HEAD_TOO_LARGE:
            self._refuse(conn, HEAD_TOO_LARGE)
        elif status == PendingRequest.MALFORMED:
            self._refuse(conn, BAD_REQUEST)
        elif pending.body_length is None:
            self._refuse(conn, BODY_TOO_LARGE)  # chunked: only reading all of it would tell
        else:
            # Content-Length over the limit: the app refuses it from the head alone (413).
            self._dispatch(conn, pending, truncated=True)

    def _dispatch(self, conn, pending, truncated):
        """Give a thread the request, parsed from memory; the thread's socket only writes."""
        self._stop_reading(conn)
        if conn.parser is None:
            # Also tells the thread not to wait for data (it sets the socket blocking).
            conn.parser = http.get_parser(self.cfg, EndOfInput(), conn.client)
            conn.initialized = True
            # The thread's only blocking calls are sends: bound each one, so a client
            # that stops reading its response frees the thread.
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _SEND_TIMEVAL)
        # A surplus (the next, pipelined request) stays in the parser's buffer, and
        # finish_request brings the connection back here.
        conn.parser.unreader.unread(pending.data)
        conn.request_truncated = truncated
        conn.continued = pending.continued
        ThreadWorker.enqueue_req(self, conn)

    def handle(self, conn):
        """gthread's: serve the request; then, while no other request waits for a thread,
        serve the connection's next request here if it arrives whole within FOLLOW_UP."""
        keep_alive = super().handle(conn)
        while keep_alive is True and self.alive and FOLLOW_UP > 0:
            if not self.tpool._work_queue.empty():
                break
            data = conn.parser.unreader.take_buffered()
            if not data:
                if not self._readable(conn.sock.fileno()):
                    break
                try:
                    data = conn.sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    return False
                if not data:
                    return False
            pending = PendingRequest(
                data, time.monotonic() + self.read_timeout, self.max_head, self.max_body
            )
            if pending.scan() != PendingRequest.COMPLETE:
                conn.parser.unreader.unread(data)  # the event loop reads the rest
                break
            conn.parser.unreader.unread(data)
            conn.request_truncated = False
            conn.continued = False
            keep_alive = super().handle(conn)
        return keep_alive

    @staticmethod
    def _readable(fd):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(FOLLOW_UP * 1000))

    def handle_request(self, req, conn):
        if conn.continued or conn.request_truncated:
            # Sent already; or the body is over the limit, and must not be invited.
            req._expected_100_continue = False
        if conn.request_truncated:
            req.must_close = True  # the response says so; finish_request closes
        elif isinstance(req.body.reader, ChunkedReader):
            # gunicorn decodes chunks (and parses trailers) as the app reads them, so a
            # bad one would fail inside the app (a 500) or after its answer. Decode it
            # here, from memory: a bad one is gunicorn's 400, before the app runs.
            req.body = Body(BytesIO(req.body.read()))
        try:
            return super().handle_request(req, conn)
        except BlockingIOError:
            self.log.info("Closing a connection whose client stopped reading its response")
            return False

    def finish_request(self, conn, fs):
        """Back from a thread: keep the connection alive as gthread does, or close it here."""
        keep_alive = not fs.cancelled() and fs.exception() is None and fs.result()
        if keep_alive and not conn.request_truncated:
            super().finish_request(conn, fs)
        else:
            # gthread would close gracefully by blocking this loop for up to 2 s; and the
            # rest of an over-long body is still on the wire, so that one is never reused.
            self._close(conn)

    def _send(self, conn, data):
        with contextlib.suppress(OSError):
            conn.sock.send(data)

    def _refuse(self, conn, response):
        self._send(conn, response)
        self._close(conn)

    def _close(self, conn):
        """Close once the peer has what was sent: FIN, then drain its bytes without blocking."""
        self._stop_reading(conn)
        self.nr_conns -= 1
        try:
            conn.sock.setblocking(False)
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            conn.sock.close()
            return
        self.lingering[conn] = time.monotonic() + LINGER_SECONDS
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_linger, conn))

    def _on_linger(self, conn, _sock):
        try:
            while conn.sock.recv(RECV_SIZE):
                pass
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._end_linger(conn)

    def _end_linger(self, conn):
        del self.lingering[conn]
        self.poller.unregister(conn.sock)
        conn.sock.close()

    def murder_pending(self):
        """Besides gthread's own: time out slow requests and lingering closes."""
        super().murder_pending()
        now = time.monotonic()
        while self.reading:
            conn, pending = next(iter(self.reading.items()))
            if pending.deadline > now:
                break
            if pending.data:
                self._refuse(conn, REQUEST_TIMEOUT)
            else:
                self._close(conn)
        if not self.alive:
            # Stopping: a connection that has sent nothing gets what gthread gives a
            # kept-alive one, not the whole read timeout, which would delay the exit.
            for conn, pending in list(self.reading.items()):
                opened = pending.deadline - self.read_timeout
                if not pending.data and opened + STOP_KEEPALIVE_LINGER < now:
                    self._close(conn)
        while self.lingering:
            conn, deadline = next(iter(self.lingering.items()))
            if deadline > now:
                break
            self._end_linger(conn)

    def wait_for_and_dispatch_events(self, timeout):
        if self.reading:
            first = next(iter(self.reading.values()))
            timeout = min(timeout, max(first.deadline - time.monotonic(), 0.0))
        super().wait_for_and_dispatch_events(timeout)

    def handle_exit(self, sig, frame):
        """SIGTERM: serve the connections already queued on the listening sockets too."""
        if self.alive:
            self.method_queue.defer(self._drain_backlog)
        super().handle_exit(sig, frame)

    def _drain_backlog(self):
        """Accept what the kernel has queued, then close this worker's listening sockets.

        Once the last process closes a listening socket the kernel resets the connections
        still queued on it; closing right after the drain leaves that window tiny, and a
        client that connects later is refused cleanly. Other workers (a reload) keep their
        own descriptors of the same socket and go on serving.
        """
        self.set_accept_enabled(False)
        for listener in self.sockets:
            while self.nr_conns < self.worker_connections:
                try:
                    client, addr = listener.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    break
                self.nr_conns += 1
                self.enqueue_req(TConn(self.cfg, client, addr, listener.getsockname()))
            listener.close()
