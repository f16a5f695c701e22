"""Figure 2b: the nearest-centroid searches inside a PLAID index build, ours against the
straightforward forms.

A build searches every token vector's nearest centroid twice: in each k-means iteration (L2,
``kmeans.assign``) and when the codec compresses the index (dot product, colbert-ai's
``ResidualCodec.compress_into_codes``). Both multiply thin matrices (d = 128) against tens of
thousands of centroids. Timed on random unit vectors, the same inputs for every row:

- k-means assignment: ``kmeans.assign`` (row blocks into one reused buffer, ``addmm``)
  against the form it replaced (a fresh ``points @ centroids.T - ||c||²/2`` block per step of
  the same size, then ``argmax``);
- codec: our ``indexer._Codec`` against colbert-ai's own ``compress_into_codes`` (a
  [centroids, 16k vectors] score matrix per batch, reduced along its columns).

Each pair must give the same indices (printed). Defaults: 50,000 vectors, 32,768 centroids
(what colbert-ai picks for ~100,000 passages); ``--quick``: 20,000 × 8,192.

    python -m benchmarks.index_kernels --threads 2
"""

from __future__ import annotations

import statistics

import torch

from benchmarks import common
from jmlr.retrieval.kmeans import _BLOCK_ELEMENTS, assign


def fresh_block_assign(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The replaced form: a new score block and a separate bias pass per step."""
    half_norms = 0.5 * (centroids * centroids).sum(-1)
    chunk = max(1, _BLOCK_ELEMENTS // centroids.size(0))   # the same blocks as assign's
    out = torch.empty(points.size(0), dtype=torch.long)
    for start in range(0, points.size(0), chunk):
        out[start:start + chunk] = (points[start:start + chunk] @ centroids.T - half_norms).argmax(-1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=None)
    parser.add_argument("--centroids", type=int, default=None)
    args = parser.parse_args(argv)
    device = common.setup_torch(args)
    if device.type != "cpu":
        raise SystemExit("index_kernels: a CPU figure (on a GPU colbert-ai's own path is kept)")
    from jmlr.retrieval import colbert as cb
    from jmlr.retrieval.indexer import _Codec

    n = args.vectors or (20_000 if args.quick else 50_000)
    k = args.centroids or (8_192 if args.quick else 32_768)
    repeats = args.repeats or 1
    gen = torch.Generator().manual_seed(0)
    points = torch.nn.functional.normalize(torch.randn(n, 128, generator=gen), dim=-1)
    centroids = torch.nn.functional.normalize(torch.randn(k, 128, generator=gen), dim=-1)
    config = cb.ColBERTConfig(dim=128, nbits=2)
    ours_codec = _Codec(config=config, centroids=centroids, avg_residual=None)
    colbert_codec = cb.ResidualCodec(config=config, centroids=centroids, avg_residual=None)
    halves = points.half()
    pairs = {
        "k-means assignment (L2)": (lambda: assign(points, centroids),
                                    lambda: fresh_block_assign(points, centroids)),
        "codec compress (dot)": (lambda: ours_codec.compress_into_codes(halves, "cpu"),
                                 lambda: colbert_codec.compress_into_codes(halves, "cpu")),
    }
    flop = 2 * n * k * 128
    results, rows = {}, []
    for name, (ours_fn, other_fn) in pairs.items():
        same = bool(torch.equal(ours_fn(), other_fn()))          # also the warm-up
        ours_s = statistics.median(common.measure(ours_fn, repeats, warmup=0))
        other_s = statistics.median(common.measure(other_fn, repeats, warmup=0))
        results[name] = {"ours_s": ours_s, "other_s": other_s, "speedup": other_s / ours_s,
                         "ours_tflops": flop / ours_s / 1e12, "other_tflops": flop / other_s / 1e12,
                         "same_indices": same}
        rows.append([name, ours_s, other_s, other_s / ours_s, flop / ours_s / 1e12,
                     flop / other_s / 1e12, same])
    ceiling = common.matmul_tflops(device, torch.float32, 1024, seconds=2.0)
    print(f"{n:,} vectors × {k:,} centroids, d = 128, fp32, {torch.get_num_threads()} threads; "
          f"median of {repeats}; fp32 1024³ matmul ceiling {ceiling:.3f} TFLOP/s")
    print(common.markdown_table(["search", "ours s", "replaced / colbert-ai s", "speed-up",
                                 "ours TFLOP/s", "other TFLOP/s", "same indices"], rows))
    common.write_results(common.results_path(args.results_dir, "index_kernels", device,
                                              args.quick), {
        "benchmark": "index_kernels", "quick": args.quick,
        "settings": {"vectors": n, "centroids": k, "dim": 128, "repeats": repeats},
        "ceiling_fp32_tflops": ceiling, "results": results,
        "environment": common.environment(device)})
    return 0 if all(r["same_indices"] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
