"""Folders as units: content hashes and atomic replacement (checkpoints, indexes)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from jmlr.io import apply_umask


def folder_sha256(path: Path) -> str:
    """sha256 (hex) over a folder's relative file names and contents, in sorted order."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def replace_folder(new: Path, target: Path) -> None:
    """Move a finished folder onto ``target``, removing what was there only afterwards; its
    permissions become those of the user's umask (a temporary folder may have been private)."""
    apply_umask(new)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
