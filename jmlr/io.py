"""Small file helpers shared by every stage: atomic writes and located jsonl reads.

Every output file is written to a temporary sibling and renamed into place, and every output
folder is built in a temporary sibling folder and renamed into place
(:func:`building_folder`), so an interrupted command never leaves a file or a folder that
looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from jmlr.errors import DataError


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[TextIO]:
    """Open a temporary file next to ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):          # make a rename durable where supported
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True                   # someone else's live process
    return True


def remove_stale_builds(target: str | Path) -> None:
    """Delete the temporary folders that killed builds of ``target`` left behind (their
    process is gone); a build still running in another process is left alone."""
    target = Path(target)
    for stale in target.parent.glob(f".{target.name}.*-*.tmp"):
        pid = stale.name[len(target.name) + 2:].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def exclusive(lock_path: str | Path, what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created if needed) across processes, so that
    only one process builds a shared cache entry while the others wait and then reuse it.
    The lock dies with its holder (an flock), so a killed builder never blocks the next."""
    import fcntl
    import logging
    import time

    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        waited = 0.0
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if waited == 0.0:
                    logging.getLogger(__name__).info(
                        "waiting for another process to finish %s", what or lock_path)
                time.sleep(0.2)
                waited += 0.2
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def publish_folder(tmp: Path, target: Path, keep: Callable[[Path], bool] | None = None) -> None:
    """Rename the finished folder ``tmp`` onto ``target`` (see :func:`building_folder`)."""
    os.chmod(tmp, 0o777 & ~_umask())         # mkdtemp makes folders private (0700)
    if target.exists() and keep is not None and keep(target):
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first: keep theirs
        return
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(target.parent)


@contextlib.contextmanager
def building_folder(target: str | Path,
                    keep: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; when the block ends without an
    error, it becomes ``target``; after an error it is removed and ``target`` is untouched.

    An existing ``target`` is moved aside and removed once the new one is in place (exports,
    checkpoints), unless ``keep(target)`` says it is complete: in content-addressed caches,
    where another process may finish the same folder first, its copy wins and ours is
    dropped. The folder gets the permissions a plain ``mkdir`` would (the user's umask).

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with building_folder(root / "out") as tmp:
    ...     _ = (tmp / "a.txt").write_text("x")
    >>> sorted(p.name for p in root.iterdir()), (root / "out" / "a.txt").read_text()
    (['out'], 'x')
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}-", suffix=".tmp",
                                dir=target.parent))
    try:
        yield tmp
        publish_folder(tmp, target, keep)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically as one JSON object per line; returns the row count."""
    count = 0
    with atomic_write(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_write(path) as handle:
        json.dump(obj, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; 1-based line numbers.

    Raises DataError naming the file and line for a missing file, malformed JSON, a line
    that is not an object, or a file with no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    seen = 0
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(path, lineno, None, f"malformed JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(path, lineno, None, "expected a JSON object on each line")
            seen += 1
            yield lineno, obj
    if seen == 0:
        raise DataError(path, None, None, "file is empty")
