"""Grouping variable-length sequences into forwards that waste little on padding.

A padded forward costs rows × longest row, whatever the real lengths; on a CPU every padded
position is paid in full. Sorting by length and cutting the sorted list under a token budget
keeps each forward's padding small. Used for the generator's per-passage utilities and the
retriever's passage encodings.
"""

from __future__ import annotations


def length_buckets(lengths: list[int], max_tokens: int | None) -> list[list[int]]:
    """Group sequence indices so that each group's padded size (rows × longest) fits a budget.

    Longest first; a sequence longer than the budget gets a group of its own. Without a budget,
    one group in the original order.

    >>> length_buckets([5, 9, 3, 8], max_tokens=18)
    [[1, 3], [0, 2]]
    >>> length_buckets([5, 9, 3], max_tokens=None)
    [[0, 1, 2]]
    >>> length_buckets([], max_tokens=10)
    []
    """
    if max_tokens is None:
        return [list(range(len(lengths)))] if lengths else []
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def inverse_order(order: list[int]) -> list[int]:
    """Positions that put items concatenated in ``order`` back into their original order.

    >>> inverse_order([2, 0, 1])
    [1, 2, 0]
    """
    inverse = [0] * len(order)
    for position, index in enumerate(order):
        inverse[index] = position
    return inverse
