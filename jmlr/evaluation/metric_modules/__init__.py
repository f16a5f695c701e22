"""``evaluate`` metric modules shipped inside the package, loaded by path (offline).

``mcq_accuracy`` (accuracy and its bootstrap interval) and ``umls_f`` (macro UMLS-F of
rationale concepts) are ``evaluate.Metric`` scripts, one folder each, needing only numpy:
``evaluate.load(metric_path("umls_f"))`` works with no network, and the folders can be copied
and loaded without jmlr. ``jmlr evaluate`` and ``jmlr factuality`` compute their numbers
through them (:func:`load_metric`). evaluate's own hub metrics (``evaluate.load("accuracy")``)
are scripts fetched from the hub on first use and fail offline (data_cards/README.md).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

NAMES = ("mcq_accuracy", "umls_f")


def metric_path(name: str) -> Path:
    """The folder of a shipped metric module.

    >>> metric_path("umls_f").name, (metric_path("umls_f") / "umls_f.py").is_file()
    ('umls_f', True)
    """
    if name not in NAMES:
        raise KeyError(f"no shipped metric {name!r} (known: {', '.join(NAMES)})")
    return Path(__file__).resolve().parent / name


@functools.cache
def load_metric(name: str) -> Any:
    """The loaded metric (once per process), kept in memory: computing writes no cache files."""
    import evaluate

    # evaluate logs the module's copy into its cache at INFO/WARNING; the load is local
    logging.getLogger("evaluate").setLevel(logging.ERROR)
    return evaluate.load(str(metric_path(name)), keep_in_memory=True)
