"""Experiment trackers (``train.report_to``): which of accelerate's trackers a run logs to.

Besides ``RUN/metrics.jsonl`` (always written), a run can log its rows to any tracker that
accelerate integrates. ``auto`` (the default) is TensorBoard when it is installed (``pip
install 'jmlr[track]'``; ``scripts/setup.sh`` installs it), nothing otherwise; ``none`` is
nothing. A tracker named explicitly must be installed: the run stops at once, before any
model loads, when it is not. Pure names here (no accelerate import), so that the config can
check them when it loads.
"""

from __future__ import annotations

import importlib.util

from jmlr.errors import ConfigError

# accelerate 1.16's trackers (accelerate.tracking.LOGGER_TYPE_TO_CLASS) and the modules each
# needs; tests/test_trackers.py checks the names against the installed accelerate.
TRACKER_MODULES: dict[str, tuple[str, ...]] = {
    "aim": ("aim",), "clearml": ("clearml",), "comet_ml": ("comet_ml",), "dvclive": ("dvclive",),
    "mlflow": ("mlflow",), "swanlab": ("swanlab",), "tensorboard": ("tensorboard", "tensorboardX"),
    "trackio": ("trackio",), "wandb": ("wandb",),
}
SPECIAL = ("auto", "none")


def check_report_to(report_to: list[str], key: str = "train.report_to") -> None:
    """Names only: known trackers, or ``auto`` / ``none`` alone.

    >>> check_report_to(["tensorboard", "wandb"]); check_report_to(["auto"])
    >>> check_report_to(["tensorbord"])
    Traceback (most recent call last):
    jmlr.errors.ConfigError: train.report_to: unknown tracker 'tensorbord' (auto, none, aim, clearml, comet_ml, dvclive, mlflow, swanlab, tensorboard, trackio, wandb)
    >>> check_report_to(["none", "wandb"])
    Traceback (most recent call last):
    jmlr.errors.ConfigError: train.report_to: 'none' cannot be combined with trackers
    """
    known = (*SPECIAL, *TRACKER_MODULES)
    for name in report_to:
        if name not in known:
            raise ConfigError(f"{key}: unknown tracker {name!r} ({', '.join(known)})")
        if name in SPECIAL and len(report_to) > 1:
            raise ConfigError(f"{key}: {name!r} cannot be combined with trackers")


def installed(name: str) -> bool:
    return any(importlib.util.find_spec(module) for module in TRACKER_MODULES[name])


def resolve_trackers(report_to: list[str], key: str = "train.report_to") -> list[str]:
    """The trackers to hand accelerate: ``auto`` → TensorBoard if installed; ``none`` or an
    empty list → none; named ones must be installed (ConfigError naming the pip package)."""
    check_report_to(report_to, key)
    if report_to == ["auto"]:
        return ["tensorboard"] if installed("tensorboard") else []
    if not report_to or report_to == ["none"]:
        return []
    missing = [name for name in report_to if not installed(name)]
    if missing:
        raise ConfigError(f"{key}: {', '.join(missing)} not installed (pip install "
                          f"{' '.join(m.replace('_', '-') for m in missing)}), or leave it out")
    return list(report_to)
