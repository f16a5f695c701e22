"""Shared fixtures. Area-specific fixtures live in the test modules that use them."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Tests must never reach a model hub; everything loads from local paths or packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
# evaluate copies the metric scripts it loads into a modules cache: a private one for tests.
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="jmlr-test-hf-modules-"))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def run_cli(capsys):
    """Run the jmlr CLI in-process: returns (exit_code, stdout, stderr)."""
    from jmlr.cli import main

    def _run(*argv: str) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return _run
