"""Named training statistics: what a step reports besides its loss, summed by name.

A step returns ``{name: Stat}``. A :func:`mean` is logged as Σ total / Σ count over the
micro-batches of an optimizer step and over processes (null when the count is 0, e.g. an
accuracy over pairs when no pair was used); a :func:`total` is logged as the plain sum.
Adding a logged quantity is one more entry in that dict: nothing in the loop changes.

>>> rows = [{"loss": mean(2.0), "pairs": total(3), "acc": mean(2, 3)},
...         {"loss": mean(4.0), "pairs": total(0), "acc": mean(0, 0)}]
>>> finalize(combine(rows))
{'acc': 0.6666666666666666, 'loss': 3.0, 'pairs': 3}
>>> finalize(combine([{"acc": mean(0, 0)}]))
{'acc': None}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Stat:
    """``total`` over ``count`` (a mean), or a plain total when ``count`` is None."""

    total: float
    count: float | None = 1.0


def mean(total: float, count: float = 1.0) -> Stat:
    """A quantity logged as Σ total / Σ count (one value per micro-batch: ``mean(x)``)."""
    return Stat(float(total), float(count))


def total(value: float) -> Stat:
    """A quantity logged as its sum (pairs used, tokens seen)."""
    return Stat(float(value), None)


def combine(rows: Iterable[Mapping[str, Stat]]) -> dict[str, Stat]:
    """Sum stats by name (names absent from a row add nothing)."""
    out: dict[str, Stat] = {}
    for row in rows:
        for name, stat in row.items():
            seen = out.get(name)
            if seen is None:
                out[name] = stat
            elif (seen.count is None) != (stat.count is None):
                raise ValueError(f"statistic {name!r} is a mean in one row and a total in another")
            else:
                count = None if stat.count is None else seen.count + stat.count
                out[name] = Stat(seen.total + stat.total, count)
    return dict(sorted(out.items()))


def finalize(stats: Mapping[str, Stat]) -> dict[str, float | int | None]:
    """The logged value of each stat: mean (None when its count is 0) or total (an int when
    it is whole)."""
    values: dict[str, float | int | None] = {}
    for name, stat in stats.items():
        if stat.count is None:
            values[name] = int(stat.total) if float(stat.total).is_integer() else stat.total
        else:
            values[name] = stat.total / stat.count if stat.count else None
    return values
