"""User-facing errors: one clear message, exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A problem with what the user gave us (files, config, arguments), not a bug.

    The CLI prints ``str(err)`` and exits with code 2.
    """

    exit_code = 2


class DataError(UserError):
    """Bad input data, located by file, line and field.

    >>> str(DataError("q.jsonl", 3, "answer_idx", "letter 'F' is not among the options A-D"))
    "q.jsonl:3: field 'answer_idx': letter 'F' is not among the options A-D"
    >>> str(DataError("corpus.tsv", None, None, "file is empty"))
    'corpus.tsv: file is empty'
    """

    def __init__(
        self, path: str | Path, line: int | None, field: str | None, message: str
    ) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")


class Busy(UserError):
    """Another process holds a lock this command needs; ``holder`` says which, in words."""

    def __init__(self, message: str, holder: str = "") -> None:
        self.holder = holder
        super().__init__(message)


class ConfigError(UserError):
    """A bad config file or override, named by its dotted key."""


class Stopped(Exception):
    """A command that a signal stopped after it saved what it needs to continue.

    The CLI prints ``str(err)`` (one line: where it stopped, how to continue) and exits with
    128 + the signal's number, as a shell does for a process the signal killed, so that
    ``jmlr train && jmlr evaluate`` does not go on.
    """

    def __init__(self, signal_name: str, message: str) -> None:
        import signal

        self.signal_name = signal_name
        self.exit_code = 128 + int(signal.Signals[signal_name])
        super().__init__(message)
