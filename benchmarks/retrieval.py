"""Figure 2: PLAID index build (passages/s) and top-30 search latency per query.

Corpora: the demo task's corpus (``jmlr prepare-demo``: 3,529 passages) and a synthetic
corpus of disease-like passages recombined from HPO phenotype names (100,000 passages). The
retriever is the project's ColBERT head on all-MiniLM-L6-v2 (dim 128, doc_maxlen 96,
query_maxlen 64, nbits 2: configs/demo.yaml's settings). Queries are the demo task's
dev/test questions (question + options, as mining searches). ``--quick`` (a smoke run that
fits in about two minutes on two cores): the first 500 demo passages and 5,000 synthetic ones,
doc_maxlen 32, 30 queries.

Every index build and search runs in a child process with a hard timeout (a colbert-ai
child that dies can otherwise hang its parent). The child first builds and searches a
32-passage index, so that compiling/loading colbert-ai's C++ extensions is not timed.
Build time is colbert-ai's indexer run (encoding, k-means, compression) as the index
manifest records it; search latency is PLAID search per query (query encoding timed apart).

    python -m benchmarks.retrieval --quick
    python -m benchmarks.retrieval --device cuda
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.synthetic import cached_jsonl, synthetic_passages

SETTINGS = {"dim": 128, "doc_maxlen": 96, "query_maxlen": 64, "nbits": 2, "kmeans_niters": 4,
            "batch_size": 64, "seed": 0}
TOP_K = 30
BUILD_PHASES = ("setup", "sample_encoding", "train", "index", "index_encoding", "finalize")


# --------------------------------------------------------------------------- child process


def worker(spec_path: str) -> int:
    """Build the index of ``spec["corpus"]``, search ``spec["queries"]``; write the numbers."""
    spec = json.loads(Path(spec_path).read_text())
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from jmlr.data.corpus import corpus_fingerprint, load_corpus
    from jmlr.data.schema import Passage
    from jmlr.retrieval.colbert import prepare_checkpoint
    from jmlr.retrieval.plaid import IndexSettings, PlaidSearcher, build_index

    settings = IndexSettings(**{k: v for k, v in spec["settings"].items() if k != "dim"})
    checkpoint = prepare_checkpoint(spec["retriever"], spec["settings"]["dim"],
                                    spec["cache_dir"])
    passages = load_corpus(spec["corpus"])
    queries = spec["queries"]
    index_root = Path(spec["index_root"])

    warm = [Passage(p.id, p.text, p.title) for p in passages[:32]]
    build_index(checkpoint, warm, index_root / "warmup", settings, "warmup",
                corpus_fingerprint(warm), overwrite=True)
    query_maxlen = spec["settings"]["query_maxlen"]
    warm_searcher = PlaidSearcher(index_root / "warmup", query_maxlen=query_maxlen)
    warm_searcher.search(warm_searcher.encode(queries[:2]), k=5)

    with common.PeakMemory(common.resolve_device(spec["device"])) as memory:
        started = time.perf_counter()
        manifest = build_index(checkpoint, passages, index_root / "index", settings, spec["corpus"],
                               corpus_fingerprint(passages), overwrite=True)
        build_wall = time.perf_counter() - started
    index_bytes = sum(f.stat().st_size for f in (index_root / "index").rglob("*") if f.is_file())

    started = time.perf_counter()
    searcher = PlaidSearcher(index_root / "index", query_maxlen=query_maxlen)
    open_seconds = time.perf_counter() - started
    searcher.search(searcher.encode(queries[:3]), k=TOP_K)                   # warm caches
    started = time.perf_counter()
    Q = searcher.encode(queries, batch_size=64)
    encode_seconds = time.perf_counter() - started
    latencies = [r.seconds for r in searcher.search(Q, k=TOP_K)]
    single = []
    for query in queries[: spec["single_queries"]]:                           # encode + search
        started = time.perf_counter()
        searcher.search(searcher.encode([query]), k=TOP_K)
        single.append(time.perf_counter() - started)
    result = {
        "passages": len(passages), "build_seconds": manifest["build_seconds"],
        "build_wall_seconds": build_wall, "passages_per_s": manifest["passages_per_second"],
        "num_embeddings": manifest["num_embeddings"], "num_partitions": manifest["num_partitions"],
        "passages_encoded": manifest.get("passages_encoded"),
        "build_phase_seconds": manifest.get("phase_seconds"),
        "index_mib": common.mib(index_bytes), "build_peak_memory": memory.result(),
        "open_seconds": open_seconds, "queries": len(queries),
        "encode_ms_per_query_batched": 1000 * encode_seconds / len(queries),
        "search_ms": {k.removesuffix("_s") + ("_ms" if k.endswith("_s") else ""):
                      (1000 * v if k.endswith("_s") else v)
                      for k, v in common.summarize(latencies).items()},
        "search_p50_ms": 1000 * common.percentile(latencies, 50),
        "search_p95_ms": 1000 * common.percentile(latencies, 95),
        "single_query_p50_ms": 1000 * common.percentile(single, 50) if single else None,
        "single_query_p95_ms": 1000 * common.percentile(single, 95) if single else None,
        "device": manifest["device"],
    }
    Path(spec["out"]).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------- parent


def run_child(spec: dict[str, Any], timeout: float, device: str) -> dict[str, Any]:
    """The worker in a new process group, killed (whole group) after ``timeout`` seconds."""
    env = dict(os.environ)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""      # colbert-ai picks a GPU whenever it sees one
    with tempfile.TemporaryDirectory() as tmp:
        spec = {**spec, "out": str(Path(tmp) / "result.json"), "device": device}
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.retrieval", "--worker",
                                 str(spec_path)], cwd=common.REPO_ROOT, env=env,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"error": f"timed out after {timeout:.0f} s (process group killed)"}
        wall = time.perf_counter() - started
        if code != 0 or not Path(spec["out"]).is_file():
            return {"error": f"worker exited with code {code}"}
        return {**json.loads(Path(spec["out"]).read_text()), "child_wall_seconds": wall}


def demo_queries(folder: Path, limit: int) -> list[str]:
    from jmlr.data.formats import load_questions

    questions = load_questions(folder / "test.jsonl", fmt="jmlr") + \
        load_questions(folder / "dev.jsonl", fmt="jmlr")
    return [q.retrieval_query for q in questions[:limit]]


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse_hidden())
    parser.add_argument("--large", type=int, default=None,
                        help="passages in the synthetic corpus (default 100000; --quick 5000)")
    parser.add_argument("--queries", type=int, default=None, help="queries timed (default 180; quick 30)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per index build + search (default 4 h; quick 10 min)")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--demo-limit", type=int, default=None,
                        help="index only the first N demo passages (default: all; quick 500)")
    parser.add_argument("--doc-maxlen", type=int, default=None,
                        help=f"default {SETTINGS['doc_maxlen']}; quick 32")
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    device = common.setup_torch(args)
    large = args.large or (5000 if args.quick else 100_000)
    n_queries = args.queries or (30 if args.quick else 180)
    timeout = args.timeout or (600 if args.quick else 4 * 3600)
    settings = {**SETTINGS, "doc_maxlen": args.doc_maxlen or (32 if args.quick else SETTINGS["doc_maxlen"])}
    demo_limit = args.demo_limit or (500 if args.quick else 0)
    demo = common.demo_data(args.work_dir)
    queries = demo_queries(demo, n_queries)
    corpora = []
    if not args.skip_demo and demo_limit:
        from jmlr.io import read_jsonl

        corpora.append((f"demo-first-{demo_limit}", cached_jsonl(
            args.work_dir, f"demo-corpus-first-{demo_limit}.jsonl",
            lambda: [row for _, row in read_jsonl(demo / "corpus.jsonl")][:demo_limit])))
    elif not args.skip_demo:
        corpora.append(("demo", demo / "corpus.jsonl"))
    corpora.append((f"synthetic-{large}", cached_jsonl(
        args.work_dir, f"synthetic-corpus-{large}-seed0.jsonl", lambda: synthetic_passages(large))))
    results = {}
    for name, corpus in corpora:
        print(f"\n[{name}] building the index and searching {len(queries)} queries on {device} ...",
              flush=True)
        index_root = Path(args.work_dir).expanduser() / "indexes" / f"{name}-{device.type}"
        results[name] = run_child({"corpus": str(corpus), "queries": queries, "settings": settings,
                                   "threads": args.threads, "retriever": args.retriever,
                                   "index_root": str(index_root),
                                   "cache_dir": str(Path(args.cache_dir).expanduser()),
                                   "single_queries": min(20, len(queries))}, timeout, device.type)
    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, None, None, None, None, None, None, None, r["error"]])
            continue
        rows.append([name, r["passages"], r["build_seconds"], r["passages_per_s"], r["index_mib"],
                     r["search_p50_ms"], r["search_p95_ms"], r["encode_ms_per_query_batched"],
                     r["single_query_p50_ms"]])
    print()
    print(common.markdown_table(["corpus", "passages", "build s", "passages/s", "index MiB",
                                 f"search top-{TOP_K} p50 ms", "p95 ms",
                                 "query encode ms (batched)", "encode+search p50 ms (1 query)"],
                                rows))
    phase_rows = [[name, r["passages"], r.get("passages_encoded"),
                   *[(r.get("build_phase_seconds") or {}).get(k) for k in BUILD_PHASES]]
                  for name, r in results.items() if "error" not in r]
    print("\nBuild phases, seconds (setup: sampling and encoding the k-means sample; train: "
          "k-means and the residual codec; index: encoding the rest and compressing all):")
    print(common.markdown_table(["corpus", "passages", "passages encoded", *BUILD_PHASES],
                                phase_rows))
    common.write_results(common.results_path(args.results_dir, "retrieval", device, args.quick), {
        "benchmark": "retrieval", "quick": args.quick,
        "settings": {**settings, "top_k": TOP_K, "queries": len(queries), "retriever": args.retriever},
        "results": results, "environment": common.environment(device)})
    return 0 if all("error" not in r for r in results.values()) else 1


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
