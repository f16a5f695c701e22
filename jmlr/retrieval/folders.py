"""Folders as units: content hashes and atomic replacement (checkpoints, indexes)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from jmlr.errors import ConfigError
from jmlr.io import apply_umask

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def check_model_files(path: Path, what: str) -> dict[str, Any]:
    """Check, from its files alone, that ``path`` is a local model folder (a ColBERT
    checkpoint or a Hugging Face encoder): a folder with a config.json naming a model_type,
    no custom code, weights and a tokenizer. Returns its config.json. Nothing is loaded, so
    this runs before any model does; ``what`` names the config key in errors."""
    if not path.is_dir():
        hint = " (.dnn checkpoints are not supported)" if path.suffix == ".dnn" else ""
        raise ConfigError(f"{what}: {path} is not a folder (expected a ColBERT checkpoint or "
                          f"a Hugging Face encoder folder){hint}")
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what}: {path} has no config.json (not a model folder)") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"{what}: {config_file} is not readable JSON ({err})") from None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise ConfigError(f"{what}: {config_file} names no model_type")
    if config.get("auto_map"):
        raise ConfigError(f"{what}: {path} needs custom model code (auto_map), "
                          "which is never executed")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError(f"{what}: {path} has no weights ({' / '.join(WEIGHT_FILES)})")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(f"{what}: {path} has no tokenizer ({' / '.join(TOKENIZER_FILES)})")
    return config


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
