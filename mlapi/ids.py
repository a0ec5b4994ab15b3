"""Unique ids without a system call each: request ids and fresh identity generations, and
this process's id.

``uuid.uuid4()`` and ``secrets.token_hex()`` read the kernel's random source on every
call. An id here is a random 64-bit prefix, drawn once per process (and again in a
forked child, so gunicorn's workers never share one), followed by a 64-bit counter: 32
hex characters, unique across processes and time, but not secret. Use ``secrets`` for
anything that must not be guessed.

:func:`process_id` is ``os.getpid()`` kept per process (renewed in a forked child):
prometheus_client asks for it on every metric write to notice a fork, and each
``getpid`` is a system call.
"""

import itertools
import os
import secrets

_state = {}


def _reseed():
    _state["pid"] = os.getpid()
    _state["prefix"] = secrets.token_hex(8)
    _state["counter"] = itertools.count()


def unique_id():
    """32 hex characters, never returned twice by any process."""
    return f"{_state['prefix']}{next(_state['counter']):016x}"


def process_id():
    """``os.getpid()`` without the system call."""
    return _state["pid"]


_reseed()
os.register_at_fork(after_in_child=_reseed)
