"""Where models run: ``run.device`` resolved once, the same way by every command."""

from __future__ import annotations

import torch

from jmlr.errors import ConfigError


def resolve_device(setting: str) -> str:
    """``run.device`` → "cpu" or "cuda": "auto" picks CUDA when present; "cuda" without a
    CUDA device is a ConfigError.

    >>> resolve_device("cpu")
    'cpu'
    """
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device is cuda but no CUDA device is available (use auto or cpu)")
    return setting
