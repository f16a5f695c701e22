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
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from jmlr.errors import Busy, DataError
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
def exclusive(lock_path: str | Path, what: str = "", wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created if needed) across processes.

    ``wait=True``: another holder is waited for (a shared cache entry: one process builds it,
    the others then reuse it). ``wait=False``: :class:`~jmlr.errors.Busy` naming the holder
    instead (a run folder, which two writers must never share).

    The lock is an flock, which dies with its holder, so a killed process never blocks the
    next. While held, the file records the holder (pid, host, start, ``what``) for the
    messages, and it is emptied on release, so a record found on taking the lock was left by
    a process that ended without releasing it: a log line says so (and, for a record from
    another host, that its process cannot be checked from here). Where the file system has
    no file locks, the record alone decides: a live local pid holds the lock, a dead one
    does not, and one from another host holds it until its file is deleted.
    """
    import fcntl
    import logging

    log = logging.getLogger(__name__)
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+", encoding="utf-8") as handle:
        announced = False
        while True:
            state = _flock(handle)
            holder = read_lock_holder(lock_path)
            if state == "held" or (state == "no-locks" and not _holds(holder)):
                break
            who = describe_holder(holder, lock_path, state)
            if not wait:
                raise Busy(f"{lock_path} is held by {who}", holder=who)
            if not announced:
                log.info("waiting for %s to finish %s", who, what or lock_path)
                announced = True
            time.sleep(0.2)
        if holder and (holder.get("pid"), holder.get("host")) != (os.getpid(), _host()):
            elsewhere = holder.get("host") != _host()
            log.warning("%s: took over the lock that pid %s on %s left when it ended without "
                        "releasing it%s", lock_path, holder.get("pid"),
                        f"host {holder.get('host')}" if elsewhere else "this host",
                        " (another host: that process cannot be checked from here; the file "
                        "lock was free)" if elsewhere and state == "held" else "")
        _write_holder(handle, what)
        try:
            yield
        finally:
            handle.truncate(0)              # an empty record: released, not left by a kill
            handle.flush()
            if state == "held":
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _host() -> str:
    import socket

    return socket.gethostname()


def _flock(handle: TextIO) -> str:
    """Try to take an flock on ``handle``: "held", "busy", or "no-locks" where the file
    system refuses file locks (some network file systems)."""
    import errno
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return "held"
    except BlockingIOError:
        return "busy"
    except OSError as err:
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return "no-locks"
        raise


def _write_holder(handle: TextIO, what: str) -> None:
    record = {"pid": os.getpid(), "host": _host(), "what": what,
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    handle.truncate(0)                      # "a+" appends: the record starts the empty file
    handle.write(json.dumps(record) + "\n")
    handle.flush()


def read_lock_holder(lock_path: str | Path) -> dict[str, Any] | None:
    """The holder a lock file records (see :func:`exclusive`), or None when it records none."""
    try:
        record = json.loads(Path(lock_path).read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None


def _holds(holder: dict[str, Any] | None) -> bool:
    """Whether a recorded holder may still hold its lock: a live pid on this host, or any pid
    on another host (which cannot be checked from here)."""
    if holder is None:
        return False
    return holder.get("host") != _host() or _alive(int(holder["pid"]))


def describe_holder(holder: dict[str, Any] | None, lock_path: str | Path, state: str) -> str:
    """Who holds a lock, for one line of a message."""
    if holder is None:
        return "another process"
    pid, host, since = holder.get("pid"), holder.get("host"), holder.get("since", "?")
    if host != _host():
        where = f"pid {pid} on host {host} since {since}"
        if state == "no-locks":
            where += (f"; this file system has no file locks and that host cannot be checked "
                      f"from here: if that process has ended, delete {lock_path}")
        return where
    if state == "busy" and not _alive(int(pid)):
        return (f"a process started by pid {pid}, which has ended but left it holding "
                f"{lock_path}; `fuser -v {lock_path}` names it")
    return f"pid {pid} on this host since {since}"


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


def earlier_meta(path: Path, meta_file: Path, overwrite: bool) -> dict[str, Any] | None:
    """The meta of an earlier run of an appending command that writes ``path`` (rows, one batch
    at a time) beside ``meta_file``: None to start afresh (nothing there, or ``overwrite``,
    which removes both), else that meta ({} when only the rows are there)."""
    if not path.exists() and not meta_file.exists():
        return None
    if overwrite:
        path.unlink(missing_ok=True)
        meta_file.unlink(missing_ok=True)
        return None
    return json.loads(meta_file.read_text()) if meta_file.is_file() else {}


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


def saved_section(run_dir: str | Path, name: str) -> dict[str, Any]:
    """Section ``name`` of a run's saved ``config.yaml``; {} when the file, the section or
    its YAML is missing or unreadable (callers fall back to their defaults)."""
    import yaml

    try:
        section = (yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8"))
                   or {}).get(name) or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return {}
    return section if isinstance(section, dict) else {}
