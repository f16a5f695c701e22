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
from jmlr.textfile import check_file, json_field, too_deep, utf8_error


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
        os.chmod(tmp, 0o666 & ~user_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def user_umask() -> int:
    """The process's umask; read from /proc where it can be (``os.umask`` can only be read
    by setting it, which races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def apply_umask(path: str | Path) -> None:
    """Give ``path`` (a file, or a folder and all it holds) the permissions that mkdir() and
    open() give under the user's umask: folders and executables 0777, other files 0666, less
    the umask. ``tempfile.mkdtemp`` makes private 0700 folders and safetensors writes 0600
    files; call this before such a result is moved into place."""
    path = Path(path)
    umask = user_umask()
    for item in [path, *(path.rglob("*") if path.is_dir() else [])]:
        if item.is_symlink():
            continue
        executable = item.is_dir() or item.stat().st_mode & 0o111
        os.chmod(item, (0o777 if executable else 0o666) & ~umask)


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
    apply_umask(tmp)                           # mkdtemp folders are 0700, safetensors files 0600
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
    dropped. The folder and its files get the permissions a plain ``mkdir`` and ``open`` would
    (the user's umask).

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


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, read in blocks."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


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
    that is not an object, bytes that are not UTF-8, or a file with no rows.
    """
    path = check_file(path)
    seen = 0
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(path, lineno, None, f"malformed JSON ({err.msg})") from None
                except RecursionError:
                    raise too_deep(path, lineno) from None
                if not isinstance(obj, dict):
                    raise DataError(path, lineno, None, "expected a JSON object on each line")
                seen += 1
                yield lineno, obj
    except UnicodeDecodeError:
        raise utf8_error(path, json_field) from None
    if seen == 0:
        raise DataError(path, None, None, "file is empty")


def check_safetensors(path: str | Path) -> None:
    """DataError unless ``path`` is a complete safetensors file: its header is read and
    checked against the file's size (no tensor is loaded), so a truncated or damaged file
    is found in milliseconds instead of after the model around it has been built."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            handle.keys()
    except (SafetensorError, OSError) as err:
        raise DataError(path, None, None, f"damaged safetensors file ({err}); copy or export "
                        "it again") from None
