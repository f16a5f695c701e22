"""colbert-ai's C++ extensions: never wait silently on a build that is not running.

torch compiles an extension inside its build folder (``$TORCH_EXTENSIONS_DIR/<name>``) while
holding a ``lock`` file there, and a second process waits, without a word and without end,
for that file to go away. A build killed hard (``kill -9``, a lost machine) leaves the file
behind, and every later command then hangs. :func:`guarded_load` stands in front of torch's
``load`` for each colbert-ai extension (``colbert.py`` installs it):

- jmlr processes take turns to judge and clear a lock, through an ``flock`` beside the build
  folder (the kernel releases it when its holder dies, so it can never go stale);
- a ``lock`` that no live process holds open and no process builds beside (``/proc``) is
  stale: it is removed together with the half-built outputs, with a warning, and the
  extension is built again;
- a ``lock`` that a live process holds (another program compiling) is waited for, with a log
  line naming it and, after ``timeout_s``, one error line giving the command that frees it;
  where ``/proc`` cannot tell, a lock older than STALE_AFTER_S counts as stale;
- a cold cache logs "compiling colbert-ai's extensions (about N minutes, once)" first.

This module imports neither colbert-ai nor anything heavy; tests call
:func:`clear_stale_lock` directly on a planted lock. torch's own silent wait remains only
for a lock made between our look and torch's (a live build, which then finishes).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jmlr.errors import UserError

log = logging.getLogger(__name__)

LOCK_NAME = "lock"                # torch.utils.file_baton's file in the build folder
STALE_AFTER_S = 30 * 60           # without /proc: no build of these extensions takes this long
WAIT_TIMEOUT_S = 30 * 60          # waiting on a live lock this long is an error with a fix
COMPILE_MINUTES = 3               # measured: CPU ~3 min for three extensions, CUDA 3 min 17 s
_announced = False                # the cold-cache message, once per process


@dataclass
class LockState:
    """A torch build lock as seen now: its age and the processes holding it open."""

    path: Path
    inode: int
    age_s: float
    holders: list[int] | None     # pids with the file open; None where /proc cannot tell

    @property
    def stale(self) -> bool:
        if self.holders is not None:
            return not self.holders
        return self.age_s > STALE_AFTER_S


def lock_holders(path: Path) -> list[int] | None:
    """Pids of the processes still building where the lock ``path`` lies: torch's builder
    keeps the lock's file descriptor open for the whole build, and ninja and the compiler run
    inside the build folder (they outlive a builder killed with -9 for a while). None when
    ``/proc`` is not available."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    target, folder = str(path.resolve()), str(path.parent.resolve())
    holders = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cwd = os.readlink(entry / "cwd")
            if cwd == folder or cwd.startswith(folder + os.sep):
                holders.append(int(entry.name))
                continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:     # gone, or another user's process
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(fd) == target:
                    holders.append(int(entry.name))
                    break
    return sorted(holders)


def lock_state(build_dir: Path) -> LockState | None:
    """The state of ``build_dir``'s lock, or None when there is none."""
    path = build_dir / LOCK_NAME
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return LockState(path, stat.st_ino, time.time() - stat.st_mtime, lock_holders(path))


def _describe(state: LockState) -> str:
    if state.holders:
        return f"held by process {', '.join(map(str, state.holders))}"
    return f"{state.age_s / 60:.0f} min old"


def _clear_if_stale(build_dir: Path) -> tuple[bool, LockState | None]:
    """(cleared, a lock to look at again or None): one look at the lock, clearing it when
    it is stale and still the same file a moment later."""
    state = lock_state(build_dir)
    if state is None or not state.stale:
        return False, state
    time.sleep(0.5)   # a builder between closing and removing its lock removes it now
    again = lock_state(build_dir)
    if again is None or again.inode != state.inode or not again.stale:
        return False, again
    log.warning("colbert-ai's extension build in %s was interrupted (its lock is %s and no "
                "process holds it): removing the lock and the partial build, and compiling "
                "again", build_dir, _describe(again))
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True, exist_ok=True)
    return True, None


def clear_stale_lock(build_dir: Path, timeout_s: float = WAIT_TIMEOUT_S,
                     poll_s: float = 1.0) -> bool:
    """Make ``build_dir`` safe to hand to torch: remove a stale lock (and the half-built
    outputs beside it), wait with a log line while a live one is held, and raise UserError
    with the fixing command after ``timeout_s``. Returns whether a stale lock was removed.

    Each look happens in :func:`build_turn`, so two jmlr processes never both clear a lock
    (one made since is another inode, and held); nobody holds the turn while waiting.
    """
    started, told = time.monotonic(), False
    while True:
        with build_turn(build_dir):
            cleared, live = _clear_if_stale(build_dir)
        if live is None:
            return cleared
        waited = time.monotonic() - started
        if waited > timeout_s:
            raise UserError(
                f"colbert-ai's extension build in {build_dir} is still locked ({_describe(live)}) "
                f"after {waited / 60:.0f} min; if no build is running there, remove the lock "
                f"with `rm {live.path}` and run the command again")
        if not told:
            log.info("waiting for another build of colbert-ai's extension in %s (%s) to finish",
                     build_dir, _describe(live))
            told = True
        time.sleep(poll_s)


@contextlib.contextmanager
def build_turn(build_dir: Path) -> Iterator[None]:
    """One jmlr process at a time judges (and clears) the lock of ``build_dir``; an ``flock``
    the kernel drops with its holder, so it cannot go stale like torch's lock."""
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(build_dir.parent / f".{build_dir.name}.jmlr-turn", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)   # held for a stat, or while a stale lock is cleared
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_directory(name: str) -> Path:
    """Where torch builds the extension ``name`` (``TORCH_EXTENSIONS_DIR`` or its default)."""
    from torch.utils import cpp_extension

    find = getattr(cpp_extension, "_get_build_directory", None)   # private: may move
    if find is not None:
        return Path(find(name, verbose=False))
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    return Path(root) / name


def is_built(build_dir: Path, name: str) -> bool:
    return (build_dir / f"{name}.so").is_file()


def guarded_load(*args: Any, **kwargs: Any) -> Any:
    """``torch.utils.cpp_extension.load`` with the checks above (same arguments, same result)."""
    from torch.utils import cpp_extension

    global _announced
    name = kwargs["name"] if "name" in kwargs else args[0]
    build_dir = Path(kwargs.get("build_directory") or build_directory(name))
    cleared = clear_stale_lock(build_dir)
    if (cleared or not is_built(build_dir, name)) and not _announced:
        log.info("compiling colbert-ai's extensions (about %d minutes, once; later commands "
                 "load them in seconds)", COMPILE_MINUTES)
        _announced = True
    return cpp_extension.load(*args, **kwargs)
