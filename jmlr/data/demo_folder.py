"""The demo task's folder: ``prepare-demo`` writes only into an empty folder or its own task.

A folder is the demo's own when its README.md starts with the demo's title (a finished task:
the README is written last) or when it holds the marker that ``prepare-demo`` writes before
anything else and removes after the README (a task whose writing was interrupted). Any other
non-empty folder may hold the user's files (their own ``corpus.jsonl``): it is refused
unless ``--overwrite`` says otherwise.
"""

from __future__ import annotations

from pathlib import Path

from jmlr.errors import ConfigError

README_TITLE = "# Demo task: rare-disease diagnosis from HPO phenotypes"
MARKER = ".jmlr-demo-in-progress"


def is_demo_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a demo task written by ``prepare-demo`` (finished or not)."""
    if (folder / MARKER).is_file():
        return True
    readme = folder / "README.md"
    try:
        with readme.open(encoding="utf-8") as handle:
            return handle.readline().rstrip("\n") == README_TITLE
    except (OSError, UnicodeDecodeError):
        return False


def check_out_dir(folder: Path, overwrite: bool) -> None:
    """ConfigError unless ``folder`` is absent, empty, a demo task, or ``overwrite`` is set."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file, not a folder")
    if overwrite or not folder.exists() or is_demo_folder(folder):
        return
    entries = sorted(p.name for p in folder.iterdir())
    if entries:
        raise ConfigError(f"--out {folder} is not empty and holds no demo task ({len(entries)} "
                          f"entries, e.g. {entries[0]}); choose an empty folder, or pass "
                          "--overwrite to write the demo's files over what is there")


def mark_in_progress(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("prepare-demo is writing this folder\n", encoding="utf-8")


def mark_finished(folder: Path) -> None:
    (folder / MARKER).unlink(missing_ok=True)
