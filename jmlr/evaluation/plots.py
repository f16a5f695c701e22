"""Plots for the run report, returned as base64 PNG so the HTML needs no other file.

matplotlib runs on its non-interactive Agg backend (no display needed); each function draws
one figure, encodes it and closes it.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def _encode(fig) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def line_plot(series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str,
              xlabel: str = "step", ylabel: str = "") -> str:
    """One line per ``label -> (xs, ys)``; base64 PNG.

    >>> png = line_plot({"loss": ([1, 2, 3], [3.0, 2.0, 1.5])}, "loss")
    >>> base64.b64decode(png)[:4] == b"\\x89PNG"
    True
    """
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), marker="o" if len(xs) < 30 else None, markersize=3, label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _encode(fig)


def histogram(series: dict[str, Sequence[float]], title: str, xlabel: str, bins: int = 10,
              value_range: tuple[float, float] = (0.0, 1.0)) -> str:
    """Histograms of ``label -> values`` over ``value_range``, bars side by side; base64 PNG."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    labels = list(series)
    ax.hist([list(series[k]) for k in labels], bins=bins, range=value_range, label=labels,
            edgecolor="white")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("examples")
    ax.grid(alpha=0.3, axis="y")
    if len(labels) > 1:
        ax.legend(fontsize=8)
    return _encode(fig)


def grouped_bars(groups: Sequence[str], series: dict[str, Sequence[float | None]], title: str,
                 ylabel: str = "accuracy (%)") -> str:
    """Bars per group (e.g. datasets), one colour per series (e.g. mode/scoring); None
    values are left out; base64 PNG."""
    fig, ax = plt.subplots(figsize=(max(6.5, 1.4 * len(groups) + 3.5), 3.4))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [g + i * width for g, v in enumerate(values) if v is not None]
        ys = [v for v in values if v is not None]
        ax.bar(xs, ys, width=width, label=label)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], list(groups))
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _encode(fig)
