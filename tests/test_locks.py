"""Cross-process locks (jmlr.io.exclusive): a live holder is named and waited for or refused,
a lock that a killed process left is taken over with a line saying whose it was."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jmlr.errors import Busy
from jmlr.io import exclusive, read_lock_holder

REPO = Path(__file__).resolve().parents[1]


def hold_in_another_process(lock: Path, seconds: float = 60) -> subprocess.Popen:
    """A live process that holds ``lock`` for ``seconds`` (returns once it holds it)."""
    code = ("import sys, time\nfrom jmlr.io import exclusive\n"
            f"with exclusive({str(lock)!r}, 'jmlr train', wait=False):\n"
            f"    print('held', flush=True)\n    time.sleep({seconds})\n")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_live_holder_is_refused_by_name_then_its_kill_frees_the_lock(tmp_path, caplog):
    lock = tmp_path / "train.lock"
    holder = hold_in_another_process(lock)
    try:
        with pytest.raises(Busy, match=rf"held by pid {holder.pid} on this host since "), \
                exclusive(lock, "jmlr train", wait=False):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)        # killed: no release, its record stays
        holder.wait()
    assert read_lock_holder(lock)["pid"] == holder.pid
    with caplog.at_level(logging.WARNING, logger="jmlr.io"), exclusive(lock, "x", wait=False):
        assert read_lock_holder(lock)["pid"] == os.getpid()
    assert f"took over the lock that pid {holder.pid} on this host left" in caplog.text
    assert lock.read_text() == ""                 # released: no record for the next one


def test_a_record_from_another_host_is_taken_over_when_its_file_lock_is_free(tmp_path, caplog):
    lock = tmp_path / "train.lock"
    lock.write_text(json.dumps({"pid": 4242, "host": f"not-{socket.gethostname()}",
                                "what": "jmlr train", "since": "2024-01-01 00:00:00"}))
    with caplog.at_level(logging.WARNING, logger="jmlr.io"), exclusive(lock, "x", wait=False):
        pass
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and f"pid 4242 on host not-{socket.gethostname()}" in said[0]
    assert "cannot be checked from here" in said[0]


def test_a_waiting_process_names_the_holder_and_goes_on_after_its_release(tmp_path, caplog):
    lock = tmp_path / "cache.lock"
    holder = hold_in_another_process(lock, seconds=1)
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="jmlr.io"), exclusive(lock, "converting x"):
        waited = time.monotonic() - started
    holder.wait()
    assert waited > 0.2 and f"waiting for pid {holder.pid} on this host" in caplog.text
    assert "to finish converting x" in caplog.text


def test_without_file_locks_the_record_alone_decides(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def no_locks(fd, operation):               # as on a network file system without locks
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lock = tmp_path / "train.lock"

    def record(pid: int, host: str) -> None:
        lock.write_text(json.dumps({"pid": pid, "host": host, "since": "2024-01-01 00:00:00"}))

    record(os.getppid(), socket.gethostname())                    # a live process here
    with pytest.raises(Busy, match=rf"held by pid {os.getppid()} on this host"), \
            exclusive(lock, wait=False):
        pass
    record(4242, f"not-{socket.gethostname()}")                   # cannot be checked from here
    with pytest.raises(Busy, match=rf"no file locks .* delete {lock}"), exclusive(lock, wait=False):
        pass
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record(dead.pid, socket.gethostname())                        # ended: taken over
    with caplog.at_level(logging.WARNING, logger="jmlr.io"), exclusive(lock, wait=False):
        assert read_lock_holder(lock)["pid"] == os.getpid()
    assert f"pid {dead.pid} on this host left" in caplog.text and lock.read_text() == ""
