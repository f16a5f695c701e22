"""Seeded Lloyd k-means in torch: the PLAID index's centroids without faiss.

colbert-ai trains its centroids with ``faiss.Kmeans`` (squared L2, a bounded sample per
centroid). This does the same on whatever device the points are on, in chunks so that the
points-by-centroids score matrix never has to fit in memory at once.
"""

from __future__ import annotations

import torch

# Like faiss: more points per centroid than this adds time, not quality.
MAX_POINTS_PER_CENTROID = 256
# Elements of one [chunk, k] score block (256 MiB in float32).
_BLOCK_ELEMENTS = 1 << 26


def nearest(points: torch.Tensor, centroids: torch.Tensor,
            bias: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the highest-scoring centroid, score ``points @ centroids.T + bias``, per point.

    points [n, d], centroids [k, d], bias [k] or None -> [n] (int64). Row blocks of scores go
    into one reused buffer (``addmm``/``mm`` with ``out=``): materialising the [n, k] matrix,
    or a fresh block per step plus a separate bias pass, spent as much time moving memory as
    multiplying on a CPU (the matrices are thin: d = 128 against k in the tens of thousands).

    >>> nearest(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    tensor([1, 0])
    """
    rows = max(1, min(points.size(0), _BLOCK_ELEMENTS // max(1, centroids.size(0))))
    transposed = centroids.T.contiguous()
    buffer = torch.empty(rows, centroids.size(0), dtype=points.dtype, device=points.device)
    out = torch.empty(points.size(0), dtype=torch.long, device=points.device)
    for start in range(0, points.size(0), rows):
        block = points[start:start + rows]
        scores = buffer[:block.size(0)]
        if bias is None:
            torch.mm(block, transposed, out=scores)
        else:
            torch.addmm(bias, block, transposed, out=scores)
        torch.argmax(scores, dim=-1, out=out[start:start + block.size(0)])
    return out


def assign(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid (squared L2) for every point.

    points [n, d], centroids [k, d] -> [n] (int64). argmin ||x - c||² = argmax x·c - ||c||²/2.

    >>> assign(torch.tensor([[0.0, 0.1], [5.0, 5.0]]), torch.tensor([[5.0, 4.0], [0.0, 0.0]]))
    tensor([1, 0])
    """
    return nearest(points, centroids, -0.5 * (centroids * centroids).sum(-1))


def kmeans(points: torch.Tensor, k: int, niters: int, seed: int = 0) -> torch.Tensor:
    """``k`` centroids [k, d] of ``points`` [n, d] after ``niters`` Lloyd iterations.

    Starts from k distinct random points; a centroid that loses all its points is moved to
    a random point, as faiss does when it splits a cluster. Deterministic for a given seed.
    With no more points than centroids, the points themselves are the centroids (repeated).

    >>> g = torch.Generator().manual_seed(0)
    >>> blobs = torch.cat([torch.randn(50, 2, generator=g) * 0.1 + 3,
    ...                    torch.randn(50, 2, generator=g) * 0.1 - 3])
    >>> c = kmeans(blobs, 2, niters=5)
    >>> sorted(round(v) for v in c[:, 0].tolist())
    [-3, 3]
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    points = points.float()
    n = points.size(0)
    if n == 0:
        raise ValueError("k-means needs at least one point")
    if n <= k:
        repeat = torch.arange(k) % n
        return points[repeat.to(points.device)].clone()
    if n > k * MAX_POINTS_PER_CENTROID:
        keep = torch.randperm(n, generator=generator)[:k * MAX_POINTS_PER_CENTROID]
        points = points[keep.to(points.device)]
        n = points.size(0)

    start = torch.randperm(n, generator=generator)[:k].to(points.device)
    centroids = points[start].clone()
    for _ in range(niters):
        labels = assign(points, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, labels, points)
        counts = torch.bincount(labels, minlength=k)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(-1).to(sums.dtype)
        empty = (~filled).nonzero().squeeze(-1)
        if empty.numel():
            pick = torch.randint(0, n, (empty.numel(),), generator=generator).to(points.device)
            centroids[empty] = points[pick]
    return centroids
