"""Request ids and fresh generations: unique across threads and forked workers."""

import os
import threading

from mlapi.ids import process_id, unique_id


def test_ids_are_32_hex_characters_and_never_repeat_across_threads():
    seen = []

    def draw():
        seen.extend(unique_id() for _ in range(5000))

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 20_000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in seen)


def test_a_forked_worker_draws_its_own_prefix():
    """gunicorn forks its workers from one master: their ids must not collide."""
    before = unique_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write, unique_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    after = unique_id()
    assert child[:16] != before[:16] == after[:16]
    assert len({before, child, after}) == 3


def test_the_process_id_is_the_kernels_and_renewed_in_a_forked_child():
    assert process_id() == os.getpid()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, f"{process_id()} {os.getpid()}".encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode().split()
    os.waitpid(pid, 0)
    os.close(read)
    assert child[0] == child[1] == str(pid)
    assert process_id() == os.getpid()
