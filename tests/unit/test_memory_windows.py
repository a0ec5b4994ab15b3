"""The budget's moving windows in process memory: limits' rules, in O(1) per hit."""

import random
import threading
import types

import limits.storage.memory as limits_memory
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from mlapi.budget import MemoryWindows


class Clock:
    def __init__(self, now=1_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


def test_a_window_accepts_its_limit_then_frees_each_entry_after_exactly_its_expiry():
    clock = Clock()
    windows = MemoryWindows(clock)
    results = [windows.hit("k", 3, 60, 1)[0] for _ in range(4)]
    assert results == [True, True, True, False]
    clock.now += 60  # an entry counts while it is at most 60 s old
    assert windows.hit("k", 3, 60, 1)[:2] == (False, 3)
    clock.now += 0.001
    accepted, count, oldest, now = windows.hit("k", 3, 60, 1)
    assert (accepted, count, now) == (True, 1, clock.now)
    assert oldest == clock.now


def test_a_batch_costs_its_rows_and_a_batch_over_the_limit_is_refused():
    windows = MemoryWindows(Clock())
    assert windows.hit("k", 5, 60, 4)[:2] == (True, 4)
    assert windows.hit("k", 5, 60, 2)[:2] == (False, 4)
    assert windows.hit("k", 5, 60, 1)[:2] == (True, 5)
    assert windows.hit("other", 5, 60, 6)[:2] == (False, 0)


def test_it_decides_as_limits_moving_window_does(monkeypatch):
    """Random costs and pauses, the same answers and counts as limits' MemoryStorage.

    Pauses avoid an entry exactly ``expiry`` old: there limits' hit counts it and its
    window statistics do not; here both count it, as the budget's Redis script does.
    """
    clock = Clock()
    monkeypatch.setattr(limits_memory, "time", types.SimpleNamespace(time=clock))
    storage = MemoryStorage()
    reference = MovingWindowRateLimiter(storage)
    item = parse("7/10 seconds")
    windows = MemoryWindows(clock)
    rng = random.Random(7)
    for _ in range(2_000):
        clock.now += rng.choice([0.0, 0.0013, 0.37, 1.1, 2.9, 9.9991, 10.0007])
        cost = rng.choice([1, 1, 1, 2, 3, 8])
        expected = reference.hit(item, "k", cost=cost)
        _, remaining = reference.get_window_stats(item, "k")
        accepted, count, _, _ = windows.hit("k", 7, 10, cost)
        assert (accepted, 7 - count) == (expected, remaining)
    storage.timer.cancel()


def test_a_sweep_forgets_only_keys_whose_own_window_is_empty():
    clock = Clock()
    windows = MemoryWindows(clock)
    windows.SWEEP_EVERY = 3
    windows.hit("hourly", 1, 3600, 1)
    windows.hit("secondly", 1, 1, 1)
    clock.now += 5
    windows.hit("secondly", 1, 1, 1)  # the third hit sweeps: nothing expired in "hourly"
    assert len(windows) == 2
    assert windows.hit("hourly", 1, 3600, 1)[0] is False  # still counted
    clock.now += 3600
    for _ in range(3):
        windows.hit("new", 100, 60, 1)
    assert len(windows) == 1


def test_threads_never_spend_more_than_the_limit():
    windows = MemoryWindows()
    accepted = []

    def spend():
        accepted.extend(windows.hit("k", 5_000, 60, 1)[0] for _ in range(1_000))

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert accepted.count(True) == 5_000
